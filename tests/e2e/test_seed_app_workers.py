"""examples/seed_app's market job types under a real `bgjobs worker` that imports the app's task
module, as its run.py starts it (BGJOBS_TASK_MODULES=backend.jobs)."""

from __future__ import annotations

import pytest

from bgjobs.tasks import registry
from tests.e2e.test_workers import (  # noqa: F401 (fixture)
    StartWorker,
    enqueue,
    start_worker,
    status_is,
    wait_job,
)
from tests.seed_app_client import EXAMPLE

SEED_WORKER_ENV = {"BGJOBS_TASK_MODULES": "backend.jobs", "PYTHONPATH": str(EXAMPLE)}


@pytest.fixture(autouse=True)
def seed_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The app's types, registered here too, to validate params as its app does."""
    monkeypatch.syspath_prepend(str(EXAMPLE))
    registry.load_tasks(["backend.jobs"])


@pytest.mark.parametrize("job_type,params", [
    ("validation", {"tickers": 5, "years": 1}),
    ("optimization", {"tickers": 3, "years": 1, "population": 6, "generations": 3}),
    ("rescoring", {"tickers": 8, "years": 1, "simulations": 5}),
])
def test_product_job_types_end_to_end(db_url, store, start_worker: StartWorker,  # noqa: F811
                                      job_type, params):
    start_worker(db_url, "--concurrency", "1", env=SEED_WORKER_ENV)
    task = registry.get(job_type)
    job_id = enqueue(store, job_type, task.validate(params))
    job = wait_job(store, job_id, status_is("complete"), "complete", timeout=60)
    again = enqueue(store, job_type, task.validate(params))
    job2 = wait_job(store, again, status_is("complete"), "complete", timeout=60)
    assert job.result == job2.result  # deterministic
    total = job.progress["total"]
    assert total and job.progress["current"] == total
