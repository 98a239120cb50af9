"""Many machines: 1, 2, 4 and 8 supervisors on this machine, processes standing in for machines.

Two figures per number of supervisors N, with the same 8 worker processes in all (N
supervisors of 8/N processes each):

- drain: no-op jobs/s draining ``jobs`` jobs inserted in one statement (median of ``runs``);
- idle job cost: database transactions per job when jobs arrive one at a time into idle
  workers (``bgjobs.enqueue`` every 100 ms). Measured from pg_stat_database's xact_commit for
  the bench database over the whole life of a fleet (started, left idle or fed M jobs,
  stopped: a backend's counts are flushed when it exits), minus the same fleet's life with no
  jobs; so startup, polls, reaps and heartbeats cancel out. Includes the enqueue itself, and
  the transactions in which every LISTEN backend reads each notification (measured apart with
  bare NOTIFYs; "client" transactions are those the processes ask for).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import time
from contextlib import ExitStack
from typing import Any

import psycopg

from tests.procs import BGJOBS, ROOT

TOTAL_PROCESSES = 8
#: Commits of an idle job that send a NOTIFY: its insert, its claim, its completion.
NOTIFYING_COMMITS = 3


def _fleet(stack: ExitStack, url: str, n: int) -> list[subprocess.Popen[Any]]:
    env = {**os.environ, "DATABASE_URL": url, "PYTHONUNBUFFERED": "1"}
    procs = []
    for _ in range(n):
        log = stack.enter_context(tempfile.TemporaryFile("w+"))  # noqa: SIM115
        proc = subprocess.Popen([BGJOBS, "worker", "--concurrency",
                                 str(max(1, TOTAL_PROCESSES // n)), "--log-level", "warning"],
                                env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        stack.callback(_stop, proc)
        procs.append(proc)
    return procs


def _stop(proc: subprocess.Popen[Any]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _commits(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("SELECT pg_stat_clear_snapshot()")
        return c.execute("SELECT xact_commit + xact_rollback FROM pg_stat_database "
                         "WHERE datname = current_database()").fetchone()[0]  # type: ignore[index]


def _wait_idle(url: str, n: int, timeout: float = 60) -> None:
    """Until every supervisor listens and its processes are up (one claim per poll)."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as c:
        while c.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = "
                        "current_database() AND application_name = 'bgjobs-worker-listen'"
                        ).fetchone()[0] < n:  # type: ignore[index]
            if time.monotonic() > deadline:
                raise RuntimeError(f"{n} supervisors did not start")
            time.sleep(0.1)
    time.sleep(2.0)  # children ready, first claims and reaps done


def fleet_transactions(url: str, n: int, jobs: int, seconds: float,
                       notify_only: bool = False) -> int:
    """Transactions over a fleet's life, fed ``jobs`` jobs spread over ``seconds`` (or, with
    ``notify_only``, that many bare NOTIFY commits on a channel nobody listens to)."""
    import bgjobs

    before = _commits(url)
    with ExitStack() as stack:
        _fleet(stack, url, n)
        _wait_idle(url, n)
        if notify_only:
            with psycopg.connect(url, autocommit=True) as c:
                for _ in range(jobs):
                    c.execute("SELECT pg_notify('bgjobs_bench_nobody', '')")
                    time.sleep(seconds / jobs)
        elif jobs:
            store = bgjobs.configure(url, pool_max=1)
            gap = seconds / jobs
            for _ in range(jobs):
                bgjobs.enqueue("noop")
                time.sleep(gap)
            store.pool.close()
        else:
            time.sleep(seconds)
        time.sleep(1.0)
    time.sleep(0.5)
    with psycopg.connect(url, autocommit=True) as c:
        left = c.execute("SELECT count(*) FROM background_jobs WHERE status <> 'complete'"
                         ).fetchone()[0]  # type: ignore[index]
        c.execute("TRUNCATE background_jobs")
    if left:
        raise RuntimeError(f"{left} jobs not complete with {n} supervisors")
    return _commits(url) - before


def drain(url: str, n: int, jobs: int, runs: int) -> list[float]:
    rates = []
    with ExitStack() as stack, psycopg.connect(url, autocommit=True) as c:
        procs = _fleet(stack, url, n)
        _wait_idle(url, n)
        for n_run in range(runs + 1):  # the first one warms up (processes, plans), not counted
            c.execute("INSERT INTO background_jobs (job_type) "
                      "SELECT 'noop' FROM generate_series(1, %s)", [jobs])
            # A steady queue has fresh statistics; a bulk insert into an emptied table does not.
            c.execute("ANALYZE background_jobs")
            start = time.perf_counter()
            while c.execute("SELECT count(*) FROM background_jobs WHERE status <> 'complete'"
                            ).fetchone()[0]:  # type: ignore[index]
                if any(p.poll() is not None for p in procs):
                    raise RuntimeError("a supervisor exited")
                if time.perf_counter() - start > max(120, jobs / 200):
                    raise RuntimeError("drain timed out")
                time.sleep(0.01)
            if n_run:
                rates.append(jobs / (time.perf_counter() - start))
            c.execute("TRUNCATE background_jobs")
    return rates


def run(url: str, runs: int = 3, quick: bool = False) -> dict[str, Any]:
    counts = (1, 2, 8) if quick else (1, 2, 4, 8)
    jobs, idle_jobs, seconds = (3000, 20, 2.0) if quick else (20_000, 60, 6.0)
    out: dict[str, Any] = {"total_processes": TOTAL_PROCESSES, "drain_jobs": jobs,
                           "idle_jobs": idle_jobs}
    for n in counts:
        rates = drain(url, n, jobs, runs)
        per_job, reads = [], []
        for _ in range(runs):
            idle = fleet_transactions(url, n, 0, seconds)
            fed = fleet_transactions(url, n, idle_jobs, seconds)
            pinged = fleet_transactions(url, n, idle_jobs, seconds, notify_only=True)
            per_job.append((fed - idle) / idle_jobs)
            reads.append((pinged - idle - idle_jobs) / idle_jobs)
        total, read = statistics.median(per_job), statistics.median(reads)
        out[f"n{n}"] = {"drain_jobs_per_s": round(statistics.median(rates)),
                        "drain_runs": [round(r) for r in rates],
                        "transactions_per_idle_job": round(total, 2),
                        "transactions_runs": [round(v, 2) for v in per_job],
                        # Postgres (<= 16) wakes every LISTEN backend of the database on every
                        # NOTIFY, whatever the channel, and each reads the queue in a
                        # transaction of its own: per notifying commit, one per listener.
                        "listener_reads_per_notify": round(read, 2),
                        # An idle job makes NOTIFYING_COMMITS notifying commits.
                        "client_transactions_per_idle_job": round(
                            total - NOTIFYING_COMMITS * read, 2)}
    first, last = out[f"n{counts[0]}"], out[f"n{counts[-1]}"]
    out[f"drain_n{counts[-1]}_vs_n1"] = round(last["drain_jobs_per_s"]
                                              / first["drain_jobs_per_s"], 2)
    out[f"extra_transactions_n{counts[-1]}_vs_n1"] = round(
        last["transactions_per_idle_job"] - first["transactions_per_idle_job"], 2)
    out[f"extra_client_transactions_n{counts[-1]}_vs_n1"] = round(
        last["client_transactions_per_idle_job"] - first["client_transactions_per_idle_job"], 2)
    return out
