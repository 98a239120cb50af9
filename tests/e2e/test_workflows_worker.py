"""Workflows through a real `bgjobs worker`: fan-out, fan-in and a failure, end to end."""

from __future__ import annotations

from bgjobs.tasks.enqueue import enqueue, enqueue_many
from tests.e2e.test_workers import start_worker, status_is, wait_job  # noqa: F401 (fixture)
from tests.task_fixtures import add_up  # noqa: F401 (registers the type in this process)


def test_a_worker_runs_a_fan_out_and_fan_in_with_the_results_of_each_level(
        store, db_url, start_worker):  # noqa: F811
    worker = start_worker(db_url, "--concurrency", "2")
    root = enqueue("add_up", {"n": 1}, store=store)
    group = enqueue_many("add_up", [{"n": n} for n in range(10)], after=[root], store=store)
    summary = enqueue("add_up", {"n": 100}, after=group, store=store)
    done = wait_job(store, summary.id, status_is("complete"), "the summary completes",
                    proc=worker)
    assert done.result == {"total": 100 + sum(1 + n for n in range(10))}
    rows = {j.id: j for j in store.list_jobs(limit=20)}
    assert all(rows[j.id].started_at >= rows[root.id].finished_at for j in group)
    assert done.started_at >= max(rows[j.id].finished_at for j in group)


def test_a_failing_job_cancels_its_dependents_in_a_real_worker(store, db_url, start_worker):  # noqa: F811
    worker = start_worker(db_url)
    bad = enqueue("fatal", store=store)
    after = enqueue("add_up", after=[bad], store=store)
    cancelled = wait_job(store, after.id, status_is("cancelled"), "the dependent is cancelled",
                         proc=worker)
    assert cancelled.result["error"] == "DependencyFailed"
    assert store.get_job(bad.id).status == "error"
