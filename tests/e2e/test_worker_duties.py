"""Each supervisor duty (worker/duties/) seen at work inside a real `bgjobs worker`: a duty
dropped from the supervisor's loop, or failing there, fails its test (the fixture fails a test
on any traceback in a worker's log but a failed job's)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg

from tests.e2e import test_workers
from tests.e2e.test_workers import running_with_pid, status_is, wait_job
from tests.procs import wait_until

start_worker = test_workers.start_worker  # the same fixture: real `bgjobs worker` processes


def one(url: str, query: str, args: Any = None) -> Any:
    with psycopg.connect(url, autocommit=True) as c:
        row = c.execute(query, args).fetchone()
    return row[0] if row else None


def advanced(read: Callable[[], Any]) -> Callable[[], bool]:
    """True once ``read()`` returns something later than what it returned first."""
    first = read()
    assert first is not None
    return lambda: read() > first


def test_registry_sync_records_the_declared_types_and_schedules(db_url, start_worker):
    worker = start_worker(db_url, "--concurrency", "1")
    wait_until(lambda: one(db_url, "SELECT max_running FROM bgjobs_job_types "
                                   "WHERE job_type = 'limited'") == 2,
               20, "the limited type recorded", worker)
    types = one(db_url, "SELECT array_agg(job_type ORDER BY job_type) FROM bgjobs_job_types")
    assert {"record", "slow", "spin", "noop"} <= set(types)
    assert one(db_url, "SELECT cron FROM bgjobs_schedules WHERE name = 'nightly'") == "0 2 * * *"


def test_job_heartbeats_advance_while_a_handler_never_reports(db_url, store, start_worker):
    worker = start_worker(db_url, "--concurrency", "1", "--lease", "3s")  # a beat every second
    job_id = test_workers.enqueue(store, "spin", {"seconds": 30.0})
    wait_job(store, job_id, running_with_pid, "running", proc=worker)

    def heartbeat() -> Any:
        return store.get_job(job_id).heartbeat_at

    wait_until(advanced(heartbeat), 20, "the job's heartbeat to advance", worker)
    wait_until(advanced(heartbeat), 20, "the job's heartbeat to advance again", worker)
    assert store.get_job(job_id).status == "running"


def test_the_worker_row_beats(db_url, start_worker):
    worker = start_worker(db_url, "--concurrency", "1", "--lease", "3s")

    def beat() -> Any:
        return one(db_url, "SELECT heartbeat_at FROM bgjobs_workers WHERE pid = %s",
                   [worker.pid])

    wait_until(beat, 20, "the worker's row", worker)
    wait_until(advanced(beat), 20, "the worker's row to beat", worker)


def test_a_due_cron_tick_enqueues_its_job(db_url, store, start_worker):
    worker = start_worker(db_url, "--concurrency", "1", "--poll-interval", "1s")
    with psycopg.connect(db_url, autocommit=True) as c:
        # Every minute, made two minutes ago: the current minute's tick is due now.
        c.execute("INSERT INTO bgjobs_schedules (name, job_type, cron, params, created_at) "
                  "VALUES ('each-minute', 'noop', '* * * * *', '{\"echo\": 7}', "
                  "now() - interval '2 minutes')")
    wait_until(lambda: one(db_url, "SELECT status FROM background_jobs WHERE idempotency_key "
                                   "LIKE 'bgjobs-schedule:each-minute:%%'") == "complete",
               20, "the tick's job complete", worker)
    assert "schedule each-minute: enqueued job" in worker.output()


def test_retention_purges_an_old_finished_job_while_the_worker_runs(db_url, start_worker):
    worker = start_worker(db_url, "--concurrency", "1",
                          env={"BGJOBS_PURGE_INTERVAL": "0.5"})
    wait_until(lambda: one(db_url, "SELECT 1 FROM bgjobs_workers WHERE pid = %s", [worker.pid]),
               20, "the worker's duties running", worker)
    # Inserted after the purge at start: only a purge on the interval can delete it.
    with psycopg.connect(db_url, autocommit=True) as c:
        old = c.execute("INSERT INTO background_jobs (job_type, status, finished_at) VALUES "
                        "('noop', 'complete', now() - interval '10 days') RETURNING id"
                        ).fetchone()[0]
        recent = c.execute("INSERT INTO background_jobs (job_type, status, finished_at) VALUES "
                           "('noop', 'complete', now() - interval '1 day') RETURNING id"
                           ).fetchone()[0]
    wait_until(lambda: one(db_url, "SELECT count(*) FROM background_jobs WHERE id = %s",
                           [old]) == 0, 20, "the old job purged", worker)
    assert one(db_url, "SELECT count(*) FROM background_jobs WHERE id = %s", [recent]) == 1
    wait_until(lambda: "retention: deleted 1 finished job(s)" in worker.output(), 10,
               "the purge logged", worker)


def test_reaping_takes_back_a_job_of_a_dead_worker(db_url, store, start_worker):
    worker = start_worker(db_url, "--concurrency", "1", "--lease", "2s")
    with psycopg.connect(db_url, autocommit=True) as c:
        job_id = c.execute(
            "INSERT INTO background_jobs (job_type, status, worker_id, attempts, max_attempts, "
            "started_at, heartbeat_at, lease_seconds) VALUES ('noop', 'running', "
            "'gone-machine:4242', 1, 3, now() - interval '1 hour', now() - interval '1 hour', 1) "
            "RETURNING id").fetchone()[0]
    job = wait_job(store, job_id, status_is("complete"), "reaped, then run", proc=worker)
    assert job.attempts == 2 and job.worker_id.endswith(f":{worker.pid}")
    assert f"reaped job {job_id} (noop) of a lost worker: now pending" in worker.output()


def test_claiming_polls_for_a_job_no_notification_announced(db_url, store, start_worker):
    worker = start_worker(db_url, "--concurrency", "1", "--poll-interval", "1s")
    with psycopg.connect(db_url) as c, c.transaction():
        c.execute("ALTER TABLE background_jobs DISABLE TRIGGER background_jobs_notify_insert")
        job_id = c.execute("INSERT INTO background_jobs (job_type) VALUES ('noop') "
                           "RETURNING id").fetchone()[0]
        c.execute("ALTER TABLE background_jobs ENABLE TRIGGER background_jobs_notify_insert")
    wait_job(store, job_id, status_is("complete"), "claimed at a poll", timeout=20, proc=worker)
