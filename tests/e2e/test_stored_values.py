"""A real `bgjobs worker` after a DBA's writes of every kind (issue 17): it claims and finishes
the jobs it can, fails those whose params no task takes, and keeps running."""

from __future__ import annotations

import psycopg

from bgjobs.core.store import Store
from tests.conftest import add_job
from tests.e2e.test_workers import StartWorker, start_worker, status_is, wait_job  # noqa: F401
from tests.integration.test_stored_values import unchecked

#: params a DBA may write, and how noop's job ends: a task takes only an object (or null), and
#: JSON nested too deep for Python cannot be read at all.
WEIRD_PARAMS = {"null": "complete", '{"echo": 1e300}': "complete",
                '{"echo": [1, "a", null, {"b": {}}]}': "complete", "[1, 2]": "error",
                '"text"': "error", "5": "error",
                '{"echo": ' + "[" * 3000 + "]" * 3000 + "}": "error"}


def test_a_worker_runs_through_every_value_a_dba_may_write(db_url: str, store: Store,
                                                           conn: psycopg.Connection,
                                                           start_worker: StartWorker,  # noqa: F811
                                                           ) -> None:
    worker = start_worker(db_url, "--concurrency", "2")
    with unchecked(conn, "background_jobs", "created_at", "run_after"):
        ids = {}
        for params in WEIRD_PARAMS:
            ids[params] = conn.execute("INSERT INTO background_jobs (job_type, params) VALUES "
                                       "('noop', %s::jsonb) RETURNING id", (params,)).fetchone()[0]
        parked = conn.execute("INSERT INTO background_jobs (job_type, run_after) VALUES "
                              "('noop', 'infinity') RETURNING id").fetchone()[0]
        old = conn.execute("INSERT INTO background_jobs (job_type, created_at, priority) VALUES "
                           "('noop', '-infinity', -2147483648) RETURNING id").fetchone()[0]
        for params, job_id in ids.items():
            finished = wait_job(store, job_id, lambda j: j.finished, f"params {params[:20]}",
                                proc=worker)
            assert finished.status == WEIRD_PARAMS[params], (params[:40], finished.result)
        done = wait_job(store, old, status_is("complete"), "an unreadable created_at", proc=worker)
        assert done.unreadable == (("created_at", "-infinity"),)
        later = add_job(store)  # the worker is still claiming, on notifications
        wait_job(store, later.id, status_is("complete"), "a job after them all", proc=worker)
        assert store.get_job(parked).status == "pending"
        assert worker.popen.poll() is None
