"""Worker processes end to end: real `bgjobs worker` supervisors and children on real Postgres."""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from uuid import UUID

import psycopg
import pytest

from bgjobs.core.jobs import Attempt, Job
from bgjobs.core.store import Store
from tests.conftest import add_job, dbname, url_env
from tests.procs import BGJOBS, Proc, assert_no_tracebacks, wait_until

StartWorker = Callable[..., Proc]


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[StartWorker]:
    """Start `bgjobs worker ARGS` against a database; stops every one at the end, and fails the
    test if a worker logged a traceback other than a failed job's (a duty's or the loop's bug
    is logged and survived by design: only its log shows it)."""
    procs: list[Proc] = []

    def start(url: str, *args: str, name: str | None = None,
              command: tuple[str, ...] = (BGJOBS, "worker"),
              env: dict[str, str] | None = None) -> Proc:
        env = {**url_env(url), "BGJOBS_TASK_MODULES": "tests.task_fixtures", **(env or {})}
        log = tmp_path / f"{name or f'worker{len(procs)}'}.log"
        proc = Proc([*command, *args], env=env, log_path=log)
        procs.append(proc)
        wait_until(lambda: "worker processes ready" in proc.output(), 20, "workers ready", proc)
        return proc

    yield start
    for proc in procs:
        proc.stop()
    assert_no_tracebacks(*procs)


def enqueue(store: Store, job_type: str, params: dict | None = None, **kw) -> UUID:
    job = add_job(store, job_type, params or {}, **kw)
    return job.id


def wait_job(store: Store, job_id: UUID, pred: Callable[[Job], bool], what: str,
             timeout: float = 30.0, proc: Proc | None = None) -> Job:
    def check() -> Job | None:
        job = store.get_job(job_id)
        return job if pred(job) else None

    return wait_until(check, timeout, f"job {job_id}: {what}", proc)  # type: ignore[return-value]


def status_is(status: str) -> Callable[[Job], bool]:
    return lambda j: j.status == status


def running_with_pid(job: Job) -> bool:
    return job.status == "running" and "pid" in (job.progress or {})


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie still answers kill(0); it runs nothing.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except (FileNotFoundError, IndexError):
        return True


def worker_pid(job: Job) -> int:
    assert job.worker_id and job.worker_id.startswith(socket.gethostname() + ":")
    return int(job.worker_id.rsplit(":", 1)[1])


def test_two_workers_complete_300_jobs_exactly_once(db_url, store, start_worker, tmp_path):
    start_worker(db_url, "--concurrency", "1")
    start_worker(db_url, "--concurrency", "1")
    ran = tmp_path / "ran.txt"
    with psycopg.connect(db_url, autocommit=True) as c:
        c.execute("INSERT INTO background_jobs (job_type, params) "
                  "SELECT 'record', jsonb_build_object('path', %s::text) "
                  "FROM generate_series(1, 300)", [str(ran)])

    def all_done() -> bool:
        return store.summary() == [{"job_type": "record", "status": "complete", "jobs": 300,
                                    "oldest_pending_seconds": None}]

    wait_until(all_done, 60, "300 jobs complete")
    lines = ran.read_text().split()
    assert len(lines) == 300 and len(set(lines)) == 300
    jobs = store.list_jobs(limit=300)
    assert {j.attempts for j in jobs} == {1}
    assert {str(j.id) for j in jobs} == set(lines)


def test_idle_worker_wakes_on_notify_far_sooner_than_poll(db_url, store, start_worker):
    start_worker(db_url, "--concurrency", "1", "--poll-interval", "30s")

    def idle() -> bool:
        # After a claim that finds nothing, the worker asks when the next job is due: then idles.
        with psycopg.connect(db_url) as c:
            rows = c.execute("SELECT state, query FROM pg_stat_activity WHERE datname = %s "
                             "AND application_name = 'bgjobs-worker'", [dbname(db_url)]
                             ).fetchall()
        return any(state == "idle" and "min(run_after)" in query for state, query in rows)

    wait_until(idle, 20, "worker idle")
    job_id = enqueue(store, "noop")
    job = wait_job(store, job_id, status_is("complete"), "complete", timeout=30)
    assert job.started_at is not None and job.created_at is not None
    assert (job.started_at - job.created_at).total_seconds() < 3.0  # poll interval is 30 s


def test_kill_9_mid_job_is_reaped_and_finished_by_the_other_worker(db_url, store, start_worker):
    workers = [start_worker(db_url, "--concurrency", "1", "--lease", "2s") for _ in range(2)]
    job_id = enqueue(store, "slow", {"seconds": 3.0})
    first = wait_job(store, job_id, running_with_pid, "running")
    dead = next(p for p in workers if p.pid == worker_pid(first))
    survivor = next(p for p in workers if p is not dead)
    dead_child = first.progress["pid"]
    os.kill(dead.pid, signal.SIGKILL)
    wait_until(lambda: pid_gone(dead_child), 10, "the dead supervisor's child to die")

    done = wait_job(store, job_id, status_is("complete"), "complete", timeout=40, proc=survivor)
    assert done.attempts == 2
    assert done.result["attempt"] == 2 and worker_pid(done) == survivor.pid
    assert "reaped job " + str(job_id) in survivor.output()
    # Late writes of the dead worker's attempt are refused by the fence.
    late = Attempt(job_id, first.worker_id, 1)
    assert store.complete([(late, {"late": True}, None)]) == set()
    assert store.report_progress([(late, {"current": 0})]) == set()
    assert store.heartbeat([late]) == set()
    assert store.get_job(job_id).result == done.result


def test_live_worker_with_a_slow_cpu_job_is_never_reaped(db_url, store, start_worker):
    workers = [start_worker(db_url, "--concurrency", "1", "--lease", "2s") for _ in range(2)]
    job_id = enqueue(store, "spin", {"seconds": 7.0})  # over three leases without a progress call
    first = wait_job(store, job_id, running_with_pid, "running")
    done = wait_job(store, job_id, status_is("complete"), "complete", timeout=30)
    assert done.attempts == 1 and done.worker_id == first.worker_id
    assert done.result["pid"] == first.progress["pid"]
    assert not any("reaped" in w.output() for w in workers)


def test_cancel_running_job_stops_its_handler(db_url, store, start_worker):
    worker = start_worker(db_url, "--concurrency", "1")
    job_id = enqueue(store, "slow", {"seconds": 120.0})
    running = wait_job(store, job_id, running_with_pid, "running")
    store.cancel(job_id)
    wait_until(lambda: re.search(f"cancelled job {job_id} .*: its handler stopped",
                                 worker.output()), 10, "handler stopped", worker)
    job = store.get_job(job_id)
    assert job.status == "cancelled" and job.result is None
    # The same process takes the next job: the handler stopped, nothing was killed.
    next_id = enqueue(store, "slow", {"seconds": 0.0})
    done = wait_job(store, next_id, status_is("complete"), "next job complete", proc=worker)
    assert done.result["pid"] == running.progress["pid"]
    assert "killing process" not in worker.output()


def test_cancel_never_checking_cpu_loop_kills_and_replaces_its_process(db_url, store,
                                                                       start_worker):
    worker = start_worker(db_url, "--concurrency", "1", "--cancel-grace", "1s")
    job_id = enqueue(store, "spin", {"seconds": 600.0})
    running = wait_job(store, job_id, running_with_pid, "running")
    store.cancel(job_id)
    wait_until(lambda: f"job {job_id} (spin, attempt 1/3) ignored its cancellation"
               in worker.output(), 15, "the stuck process killed", worker)
    wait_until(lambda: pid_gone(running.progress["pid"]), 10, "the stuck process gone")
    assert store.get_job(job_id).status == "cancelled"
    next_id = enqueue(store, "slow", {"seconds": 0.0})
    done = wait_job(store, next_id, status_is("complete"), "next job complete", proc=worker)
    assert done.result["pid"] != running.progress["pid"]


def test_four_processes_hold_one_listen_connection(db_url, start_worker):
    start_worker(db_url, "--concurrency", "4", command=(sys.executable, "-m", "bgjobs.worker"))

    def connections() -> list[tuple[str, str]]:
        with psycopg.connect(db_url) as c:
            return c.execute(
                "SELECT application_name, query FROM pg_stat_activity WHERE datname = %s "
                "AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
                [dbname(db_url)]).fetchall()

    wait_until(lambda: any(q.upper().startswith("LISTEN") for _, q in connections()), 10,
               "the LISTEN connection")
    rows = connections()
    assert len([q for _, q in rows if q.upper().startswith("LISTEN")]) == 1
    assert [a for a, _ in rows].count("bgjobs-worker-listen") == 1
    # The four children hold no connections: only the supervisor's (listen, claim, results).
    assert len([a for a, _ in rows if a.startswith("bgjobs-worker")]) <= 3


def test_retry_with_backoff_then_error(db_url, store, start_worker):
    worker = start_worker(db_url, "--concurrency", "1")
    job_id = enqueue(store, "fail", max_attempts=3)
    job = wait_job(store, job_id, status_is("error"), "error", proc=worker)
    assert job.attempts == 3
    assert job.result == {"error": "RuntimeError", "message": "boom on attempt 3"}
    log = worker.output()
    delays = [float(d) for d in re.findall(f"job {job_id} .* retrying in ([0-9.]+)s", log)]
    assert len(delays) == 2 and delays[1] > delays[0] >= 0.2  # exponential backoff
    assert "no attempts left" in log and "Traceback" in log


@pytest.mark.parametrize("job_type", ["fatal", "fatal_explicit"])
def test_non_retryable_error_ends_at_once(db_url, store, start_worker, job_type):
    worker = start_worker(db_url, "--concurrency", "1")
    job_id = enqueue(store, job_type, max_attempts=3)
    job = wait_job(store, job_id, status_is("error"), "error", proc=worker)
    assert job.attempts == 1
    assert job.result["error"] in ("ValueError", "NonRetryable")
    assert "not retryable" in worker.output()


def test_sigterm_lets_a_short_job_finish(db_url, store, start_worker):
    worker = start_worker(db_url, "--concurrency", "1")
    job_id = enqueue(store, "slow", {"seconds": 1.5})
    wait_job(store, job_id, running_with_pid, "running")
    worker.signal(signal.SIGTERM)
    assert worker.popen.wait(30) == 0
    job = store.get_job(job_id)
    assert job.status == "complete" and job.attempts == 1


def test_sigterm_hands_a_long_job_back_as_pending(db_url, store, start_worker):
    worker = start_worker(db_url, "--concurrency", "1", "--shutdown-grace", "1s")
    job_id = enqueue(store, "slow", {"seconds": 120.0}, max_attempts=3)
    running = wait_job(store, job_id, running_with_pid, "running")
    worker.signal(signal.SIGTERM)
    assert worker.popen.wait(30) == 0
    job = store.get_job(job_id)
    assert job.status == "pending" and job.worker_id is None
    assert job.attempts == 1 and job.max_attempts - job.attempts == 3  # no attempt spent
    assert pid_gone(running.progress["pid"])
    assert f"handed job {job_id}" in worker.output()


def test_a_second_signal_stops_at_once(db_url, store, start_worker):
    worker = start_worker(db_url, "--concurrency", "1")  # shutdown grace: 30 s
    job_id = enqueue(store, "spin", {"seconds": 120.0})
    running = wait_job(store, job_id, running_with_pid, "running")
    worker.signal(signal.SIGTERM)
    wait_until(lambda: "stopping: claiming no more jobs" in worker.output(), 10, "stopping", worker)

    def heard() -> bool:
        # Signals within half a second of the first count as the same request: keep asking.
        if "second signal: stopping now" in worker.output():
            return True
        worker.signal(signal.SIGINT)
        return False

    wait_until(heard, 10, "the second signal heard", worker)
    assert worker.popen.wait(10) == 0  # well within the 30 s grace
    job = store.get_job(job_id)
    assert job.status == "pending" and job.attempts == 1
    assert pid_gone(running.progress["pid"])


def test_workers_reconnect_after_postgres_restart(private_cluster, start_worker):
    url = private_cluster.url()
    worker = start_worker(url, "--concurrency", "2", "--poll-interval", "30s")
    private_cluster.stop()
    wait_until(lambda: "LISTEN connection lost" in worker.output(), 15, "lost connection", worker)
    private_cluster.ensure_running()
    wait_until(lambda: "LISTEN connection restored after" in worker.output(), 30,
               "reconnected", worker)
    with psycopg.connect(url, autocommit=True) as c:
        job_id = c.execute("INSERT INTO background_jobs (job_type) VALUES ('noop') "
                           "RETURNING id").fetchone()[0]

        def complete() -> bool:
            row = c.execute("SELECT status FROM background_jobs WHERE id = %s",
                            [job_id]).fetchone()
            return row[0] == "complete"

        wait_until(complete, 30, "the job enqueued after the restart", worker)
    assert worker.alive()


def test_tight_progress_loop_writes_a_handful_of_times(db_url, store, start_worker):
    start_worker(db_url, "--concurrency", "1")
    job_id = enqueue(store, "chatty", {"calls": 100_000})
    job = wait_job(store, job_id, status_is("complete"), "complete")
    assert job.progress == {"current": 100_000, "total": 100_000}
    # version: 1 at insert, +1 claim, +1 per progress write, +1 complete (heartbeats every
    # 10 s would add more; the job takes well under a second).
    progress_writes = job.version - 3
    assert 0 <= progress_writes <= 10


def test_a_crashed_process_fails_its_job_retryably_and_is_replaced(db_url, store, start_worker):
    worker = start_worker(db_url, "--concurrency", "1")
    job_id = enqueue(store, "crash_once", max_attempts=3)
    job = wait_job(store, job_id, status_is("complete"), "complete", proc=worker)
    assert job.attempts == 2 and job.result["attempt"] == 2
    log = worker.output()
    assert "exited unexpectedly (code 3)" in log and "WorkerCrashed" in log


def test_a_job_due_later_starts_when_due_not_at_the_next_poll(db_url, store, start_worker):
    from datetime import UTC, datetime, timedelta

    start_worker(db_url, "--concurrency", "1", "--poll-interval", "60s")
    due = datetime.now(UTC) + timedelta(seconds=1.5)
    job_id = enqueue(store, "noop", run_after=due)
    # The wait is far shorter than the poll interval: the worker woke at run_after itself.
    job = wait_job(store, job_id, status_is("complete"), "complete", timeout=20)
    assert job.started_at >= due


def test_types_limits_what_a_worker_claims(db_url, store, start_worker):
    worker = start_worker(db_url, "--concurrency", "1", "--types", "slow")
    other = enqueue(store, "noop")
    mine = enqueue(store, "slow", {"seconds": 0.0})
    wait_job(store, mine, status_is("complete"), "complete", proc=worker)
    assert store.get_job(other).status == "pending"
