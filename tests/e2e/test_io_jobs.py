"""Concurrent IO-bound jobs end to end: real `bgjobs worker` supervisors with an IO process."""

from __future__ import annotations

import json
import os
import re
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest

from bgjobs.core.jobs import Job
from bgjobs.core.store import Store
from tests.conftest import add_job, url_env
from tests.procs import BGJOBS, Proc, assert_no_tracebacks, children_of, wait_until

StartWorker = Callable[..., Proc]


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[StartWorker]:
    procs: list[Proc] = []

    def start(url: str, *args: str, modules: str = "tests.io_task_fixtures") -> Proc:
        env = {**url_env(url), "BGJOBS_TASK_MODULES": modules}
        proc = Proc([BGJOBS, "worker", "--concurrency", "1", *args], env=env,
                    log_path=tmp_path / f"worker{len(procs)}.log")
        procs.append(proc)
        wait_until(lambda: "worker processes ready" in proc.output(), 20, "workers ready", proc)
        return proc

    yield start
    for proc in procs:
        proc.stop()
    assert_no_tracebacks(*procs)


def insert_many(url: str, job_type: str, n: int, params: str = "{}") -> list[UUID]:
    """One statement, as a bulk enqueue: one notification for every idle worker."""
    with psycopg.connect(url, autocommit=True) as c:
        rows = c.execute("INSERT INTO background_jobs (job_type, params) "
                         "SELECT %s, %s::jsonb FROM generate_series(1, %s) RETURNING id",
                         [job_type, params, n]).fetchall()
    return [r[0] for r in rows]


def wait_job(store: Store, job_id: UUID, pred: Callable[[Job], bool], what: str,
             proc: Proc, timeout: float = 30.0) -> Job:
    def check() -> Job | None:
        job = store.get_job(job_id)
        return job if pred(job) else None

    return wait_until(check, timeout, f"job {job_id}: {what}", proc)  # type: ignore[return-value]


def running_with_pid(job: Job) -> bool:
    return job.status == "running" and "pid" in (job.progress or {})


def max_overlap(results: list[dict[str, Any]]) -> int:
    """The most jobs running at one moment, from their start and end times."""
    events = sorted([(r["start"], 1) for r in results] + [(r["end"], -1) for r in results],
                    key=lambda e: (e[0], e[1]))
    now = most = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


def test_200_awaiting_jobs_run_at_once_in_one_process(db_url, store, start_worker):
    worker = start_worker(db_url)
    assert "1 of them IO processes, each running at once up to" in worker.output()
    ids = insert_many(db_url, "io_sleep", 200)

    def all_done() -> list[Job] | None:
        jobs = [store.get_job(i) for i in ids]
        return jobs if all(j.status == "complete" for j in jobs) else None

    jobs: list[Job] = wait_until(all_done, 60, "200 jobs complete", worker)  # type: ignore
    results = [j.result for j in jobs]
    assert len({r["pid"] for r in results}) == 1  # one process ran them all...
    assert max_overlap(results) >= 100  # ...most of them at the same time
    assert {j.attempts for j in jobs} == {1}
    assert all(j.progress["stage"] == "done" and j.progress["current"] == 1 for j in jobs)


def test_plain_handler_declared_concurrent_runs_in_threads(db_url, store, start_worker):
    worker = start_worker(db_url)
    ids = insert_many(db_url, "io_threaded", 20)
    jobs = [wait_job(store, i, lambda j: j.status == "complete", "complete", worker) for i in ids]
    results = [j.result for j in jobs]
    assert len({r["pid"] for r in results}) == 1 and max_overlap(results) >= 10


def test_cancelling_one_job_leaves_its_siblings_running(db_url, store, start_worker):
    worker = start_worker(db_url)
    ids = insert_many(db_url, "io_wait", 5, '{"seconds": 3.0}')
    running = [wait_job(store, i, running_with_pid, "running", worker) for i in ids]
    pid = running[0].progress["pid"]
    store.cancel(ids[0])
    wait_until(lambda: re.search(f"cancelled job {ids[0]} .*: its handler stopped",
                                 worker.output()), 10, "handler stopped", worker)
    for i in ids[1:]:
        done = wait_job(store, i, lambda j: j.status == "complete", "complete", worker)
        assert done.attempts == 1 and done.result["pid"] == pid
    assert store.get_job(ids[0]).status == "cancelled"
    assert "killing process" not in worker.output()


def test_a_handler_ignoring_cancel_is_killed_and_its_siblings_go_back(db_url, store,
                                                                      start_worker):
    worker = start_worker(db_url, "--cancel-grace", "1s", "--shutdown-grace", "1s")
    stubborn = add_job(store, "io_stubborn", {}).id
    siblings = insert_many(db_url, "io_wait", 3, '{"seconds": 60.0}')
    first = wait_job(store, stubborn, running_with_pid, "running", worker)
    for i in siblings:
        assert wait_job(store, i, running_with_pid, "running", worker).progress["pid"] == \
            first.progress["pid"]
    store.cancel(stubborn)
    wait_until(lambda: f"job {stubborn} (io_stubborn, attempt 1/3) ignored its cancellation"
               in worker.output(), 15, "the stuck process killed", worker)
    assert store.get_job(stubborn).status == "cancelled"
    for i in siblings:
        wait_until(lambda i=i: re.search(f"handed job {i} .* back to pending \\(its process "
                                         "was killed", worker.output()), 10, "handed back",
                   worker)
        # Claimed again by the new IO process, with the attempts it had left.
        again = wait_job(store, i, lambda j: running_with_pid(j) and
                         j.progress["pid"] != first.progress["pid"], "running again", worker)
        assert again.attempts == 2 and again.max_attempts == 4


def test_an_exception_retries(db_url, store, start_worker):
    worker = start_worker(db_url)
    job_id = add_job(store, "io_flaky", {}).id
    done = wait_job(store, job_id, lambda j: j.status == "complete", "complete", worker)
    assert done.attempts == 2 and done.result == {"attempt": 2}
    assert re.search(f"job {job_id} .* failed after .*ConnectionError: partner API down; "
                     "retrying", worker.output())


def test_a_job_blocking_the_event_loop_is_logged(db_url, store, start_worker):
    worker = start_worker(db_url, "--block-threshold", "100ms")
    job_id = add_job(store, "io_block", {"seconds": 1.5}).id
    wait_job(store, job_id, lambda j: j.status == "complete", "complete", worker)
    match = wait_until(lambda: re.search(
        f"job {job_id} \\(io_block, attempt 1\\) blocked the event loop for ([0-9.]+)s",
        worker.output()), 5, "the block logged", worker)
    assert 1.2 <= float(match[1]) < 5  # type: ignore[index]
    # While it went on, the watchdog said so (a loop that never ends is never "done").
    assert f"job {job_id} (io_block, attempt 1) has blocked the event loop for 1." in \
        worker.output()


def test_io_processes_zero_runs_async_tasks_a_process_per_job(db_url, store, start_worker):
    worker = start_worker(db_url, "--io-processes", "0")
    assert "IO processes" not in worker.output()
    assert len(children_of(worker.pid)) == 1
    job_id = add_job(store, "io_sleep", {"seconds": 0.0}).id
    done = wait_job(store, job_id, lambda j: j.status == "complete", "complete", worker)
    assert done.result["pid"] in children_of(worker.pid)


def test_a_crashed_io_process_fails_its_jobs_and_they_retry_in_a_new_one(db_url, store,
                                                                          start_worker):
    worker = start_worker(db_url, "--shutdown-grace", "1s")
    ids = insert_many(db_url, "io_wait", 4, '{"seconds": 60.0}')
    pid = {wait_job(store, i, running_with_pid, "running", worker).progress["pid"] for i in ids}
    assert len(pid) == 1
    os.kill(pid.pop(), signal.SIGKILL)
    wait_until(lambda: "running 4 jobs: each fails (retryable)" in worker.output(), 10,
               "the crash logged", worker)
    for i in ids:
        again = wait_job(store, i, lambda j: running_with_pid(j) and j.attempts == 2,
                         "retried", worker)
        assert again.max_attempts == 3 and again.result["error"] == "WorkerCrashed"


def test_a_killed_io_process_retries_its_running_jobs_and_hands_back_those_it_held(
        db_url, store, start_worker, tmp_path):
    """SIGKILL of an IO process running io_gate's 10 (its concurrency) and holding 2 more
    handed ahead: the 10 fail as a crash (an attempt spent, retried), the 2 go back to pending
    with their attempt, and a new IO process runs all 12 to the end."""
    worker = start_worker(db_url, "--shutdown-grace", "1s")
    gate = tmp_path / "gate"
    ids = insert_many(db_url, "io_gate", 12, json.dumps({"gate": str(gate)}))

    def held() -> list[Job] | None:
        jobs = [store.get_job(i) for i in ids]
        started = [j for j in jobs if running_with_pid(j)]
        return jobs if len(started) == 10 and all(j.status == "running" for j in jobs) else None

    jobs: list[Job] = wait_until(held, 20, "10 started, 2 handed ahead", worker)  # type: ignore
    started = {j.id for j in jobs if running_with_pid(j)}
    unstarted = set(ids) - started
    (pid,) = {j.progress["pid"] for j in jobs if j.id in started}
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: "running 10 jobs: each fails (retryable); 2 not started go back to "
               "pending" in worker.output(), 10, "the crash logged", worker)
    gate.touch()
    done = {i: wait_job(store, i, lambda j: j.status == "complete", "complete", worker)
            for i in ids}
    for i, job in done.items():
        assert job.result["pid"] != pid and job.attempts == 2
        # Handed back unstarted: the attempt it was claimed with is given back.
        assert job.max_attempts == (4 if i in unstarted else 3), (i in unstarted, job)
    out = worker.output()
    for i in started:
        assert re.search(f"job {i} \\(io_gate, attempt 1/3\\) failed after .*WorkerCrashed", out)
    for i in unstarted:
        assert re.search(f"handed job {i} \\(io_gate, attempt 1/3\\) back to pending \\(its "
                         "worker process crashed before it started\\)", out)


@pytest.mark.parametrize(("job_type", "at_once"), [("io_limited", 6), ("io_rated", 8)])
def test_a_limited_type_is_not_handed_ahead_so_its_limit_counts_running_jobs(
        db_url, store, start_worker, tmp_path, job_type, at_once):
    """5 at once per IO process, 8 gated jobs on two workers. A worker claims only the 5 its
    process starts, so the other worker runs the rest. io_limited (max_running 6): 6 run, one
    in each worker's process at least; handed ahead, the 6th would wait in the first process,
    `running` and counted by the limit, and only 5 would run. io_rated (starts_per_second 50,
    not binding here): all 8 run; handed ahead, the first claim would take 6 and hold one
    unstarted (its start counted at the claim), and only 7 would run."""
    workers = [start_worker(db_url), start_worker(db_url)]
    gate = tmp_path / "gate"
    ids = insert_many(db_url, job_type, 8, json.dumps({"gate": str(gate)}))

    def started() -> list[Job] | None:
        jobs = [j for j in (store.get_job(i) for i in ids) if running_with_pid(j)]
        return jobs if len(jobs) == at_once else None

    jobs: list[Job] = wait_until(started, 20, f"{at_once} started", workers[0])  # type: ignore
    assert len({j.progress["pid"] for j in jobs}) == 2  # one IO process of each worker
    assert sum(store.get_job(i).status == "running" for i in ids) == at_once
    gate.touch()
    for i in ids:
        wait_job(store, i, lambda j: j.status == "complete", "complete", workers[0])


def test_the_workers_row_shows_its_io_processes_and_what_each_holds(db_url, store,
                                                                     start_worker, tmp_path):
    """bgjobs_workers (023): an operator sees the IO process, its concurrency per type, and
    the 10 jobs it runs and 2 it holds handed ahead (a 3 s lease: a beat every second)."""
    worker = start_worker(db_url, "--lease", "3s")
    gate = tmp_path / "gate"
    ids = insert_many(db_url, "io_gate", 12, json.dumps({"gate": str(gate)}))

    def started() -> list[Job] | None:
        jobs = [j for j in (store.get_job(i) for i in ids) if running_with_pid(j)]
        return jobs if len(jobs) == 10 else None

    jobs: list[Job] = wait_until(started, 20, "10 started", worker)  # type: ignore
    (pid,) = {j.progress["pid"] for j in jobs}

    def row() -> dict[str, Any] | None:
        mine = [w for w in store.workers() if w["pid"] == worker.pid]
        return mine[0] if mine and mine[0]["running"] == 12 else None

    w: dict[str, Any] = wait_until(row, 10, "the IO process in the row", worker)  # type: ignore
    # One process for the built-in types (demo, noop), one IO process for the concurrent ones.
    assert (w["processes"], w["running"], w["io_processes"]) == (1, 12, 1)
    assert w["io_concurrency"]["io_gate"] == 10 and w["io_concurrency"]["io_wait"] == 50
    assert w["io_jobs"] == [{"pid": pid, "running": 10, "waiting": 2}]
    gate.touch()
    for i in ids:
        wait_job(store, i, lambda j: j.status == "complete", "complete", worker)
    wait_until(lambda: [w for w in store.workers() if w["pid"] == worker.pid and w["running"] == 0
                        and w["io_jobs"] == [{"pid": pid, "running": 0, "waiting": 0}]],
               10, "the IO process idle in the row", worker)


def test_shutdown_lets_running_io_jobs_finish(db_url, store, start_worker):
    worker = start_worker(db_url)
    ids = insert_many(db_url, "io_wait", 3, '{"seconds": 1.0}')
    for i in ids:
        wait_job(store, i, running_with_pid, "running", worker)
    worker.signal(signal.SIGTERM)
    wait_until(lambda: not worker.alive(), 20, "the worker stopped", worker)
    assert worker.popen.returncode == 0
    assert {store.get_job(i).status for i in ids} == {"complete"}


def test_without_concurrent_types_nothing_changes(db_url, store, start_worker):
    """Strictly opt-in: the test types of tests/task_fixtures.py start no IO process."""
    worker = start_worker(db_url, "--concurrency", "2", modules="tests.task_fixtures")
    assert "IO processes" not in worker.output()
    kids = children_of(worker.pid)
    assert len(kids) == 2
    assert not any(b"io_child" in Path(f"/proc/{k}/cmdline").read_bytes() for k in kids)
    job_id = add_job(store, "slow", {"seconds": 0.0}).id
    done = wait_job(store, job_id, lambda j: j.status == "complete", "complete", worker)
    assert done.result["pid"] in kids


def test_a_worker_for_io_types_alone_starts_no_process_per_job_children(db_url, store,
                                                                         start_worker):
    """--types naming only concurrent types: its one child is the IO process (the built-in
    noop and demo, process types, are not its to run), and it runs their jobs."""
    worker = start_worker(db_url, "--concurrency", "2", "--types", "io_sleep")
    [kid] = children_of(worker.pid)
    assert b"io_child" in Path(f"/proc/{kid}/cmdline").read_bytes()
    job_id = add_job(store, "io_sleep", {"seconds": 0.0}).id
    wait_job(store, job_id, lambda j: j.status == "complete", "complete", worker)
