"""IO-bound jobs (issue 18): N jobs that each await 100 ms, bgjobs beside pgqueuer, one process
each, the same number of jobs in flight (bench/io_tasks.py's CONCURRENCY).

bgjobs: ``bgjobs worker --concurrency 1`` with the async type ``bench_io_sleep``, which runs in
its IO process; every job reports progress before and after its wait. pgqueuer: one process of
bench/pgq_io_consumer.py, asyncpg, ``max_concurrent_tasks`` = CONCURRENCY and ``batch_size`` =
CONCURRENCY / 5 (it must be at most half of it; a fifth refills sooner). procrastinate: one
worker process (bench/procrastinate_io_worker.py, psycopg, LISTEN/NOTIFY) with
``concurrency`` = CONCURRENCY; it fetches one job per statement. Each figure is the
median time from the commit of one INSERT of all N jobs until none is left, the two queues
up side by side and interleaved run by run, after one warm-up run each. The floor is
N x 0.1 s / CONCURRENCY.

Then, bgjobs alone: 10,000 jobs (``bench_io_hold``, concurrency 10,000) awaiting 3 s, all in
flight at once in the IO process: its memory per waiting job (resident size at the peak less
idle), and the database's committed transactions per job (pg_stat_database, read after an 11 s
pause, since idle backends report their counts that late; the bench's own reads subtracted).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

from bench.common import as_url, quick_sizes
from bench.io_tasks import CONCURRENCY
from bench.peers import install_pgqueuer, versions
from tests.procs import BGJOBS, ROOT

PGQ_BATCH = CONCURRENCY // 5
BG_LEFT = "SELECT count(*) FROM background_jobs WHERE status <> 'complete'"
PGQ_LEFT = "SELECT count(*) FROM pgqueuer"
PRO_LEFT = "SELECT count(*) FROM procrastinate_jobs WHERE status <> 'succeeded'"


@contextmanager
def _process(argv: list[str], env: dict[str, str] | None = None) -> Iterator[None]:
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        time.sleep(3.0)  # imports, LISTEN, the IO process ready (the first run warms up)
        yield
    finally:
        proc.terminate()
        proc.wait(30)


def _drain(c: psycopg.Connection, insert: str, left: str, jobs: int) -> float:
    c.execute(insert, [jobs])
    start = time.perf_counter()
    deadline = start + max(60.0, jobs / 20)
    while c.execute(left).fetchone()[0]:  # type: ignore[index]
        if time.perf_counter() > deadline:
            raise RuntimeError(f"not drained in time: {left}")
        time.sleep(0.005)
    return time.perf_counter() - start


def _rss(pid: int) -> int:
    """Resident bytes of a process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _commits(c: psycopg.Connection) -> int:
    return int(c.execute("SELECT xact_commit FROM pg_stat_database "
                         "WHERE datname = current_database()").fetchone()[0])  # type: ignore[index]


def in_flight(url: str, jobs: int) -> dict[str, Any]:
    """Memory and transactions per job with ``jobs`` awaiting at once in one IO process."""
    from tests.procs import children_of

    env = {**os.environ, "DATABASE_URL": url, "BGJOBS_TASK_MODULES": "bench.io_tasks",
           "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([BGJOBS, "worker", "--concurrency", "1", "--log-level", "warning"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        time.sleep(4.0)
        io = next(p for p in children_of(proc.pid)
                  if b"io_child" in Path(f"/proc/{p}/cmdline").read_bytes())
        idle = {"io_process": _rss(io), "supervisor": _rss(proc.pid)}
        with psycopg.connect(url, autocommit=True) as c:
            before, reads = _commits(c), 1
            c.execute("INSERT INTO background_jobs (job_type, params) SELECT 'bench_io_hold', "
                      "'{\"seconds\": 3.0}' FROM generate_series(1, %s)", [jobs])
            peak = dict(idle)
            most = 0
            start = time.perf_counter()
            while True:
                running, left = c.execute(
                    "SELECT count(*) FILTER (WHERE status = 'running'), "
                    "count(*) FILTER (WHERE status <> 'complete') FROM background_jobs"
                ).fetchone()  # type: ignore[misc]
                reads += 1
                most = max(most, running)
                peak = {"io_process": max(peak["io_process"], _rss(io)),
                        "supervisor": max(peak["supervisor"], _rss(proc.pid))}
                if not left or time.perf_counter() - start > 120:
                    break
                time.sleep(0.1)
            took = time.perf_counter() - start
            time.sleep(11.0)
            commits = _commits(c) - before - reads - 1  # less the INSERT and our own reads
            c.execute("TRUNCATE background_jobs")
    finally:
        proc.terminate()
        proc.wait(30)
    return {
        "jobs": jobs, "most_running_at_once": most, "seconds": round(took, 2),
        "rss_idle_mb": {k: round(v / 2**20, 1) for k, v in idle.items()},
        "rss_peak_mb": {k: round(v / 2**20, 1) for k, v in peak.items()},
        "kb_per_waiting_job": {k: round((peak[k] - idle[k]) / jobs / 1024, 1) for k in idle},
        "transactions_per_job": round(commits / jobs, 3),
    }


def run(url: str, runs: int = 3, quick: bool = False) -> dict[str, Any]:
    install_pgqueuer(url)
    (jobs,) = quick_sizes(quick, (2000,), (500,))
    env = {**os.environ, "DATABASE_URL": url, "BGJOBS_TASK_MODULES": "bench.io_tasks",
           "PYTHONUNBUFFERED": "1"}
    bg_argv = [BGJOBS, "worker", "--concurrency", "1", "--log-level", "warning"]
    pgq_argv = [sys.executable, "-m", "bench.pgq_io_consumer", as_url(url), str(PGQ_BATCH),
                str(CONCURRENCY)]
    bg_insert = ("INSERT INTO background_jobs (job_type) "
                 "SELECT 'bench_io_sleep' FROM generate_series(1, %s)")
    pgq_insert = ("INSERT INTO pgqueuer (priority, entrypoint, payload, status) "
                  "SELECT 0, 'io_sleep', NULL, 'queued' FROM generate_series(1, %s)")
    pro_argv = [sys.executable, "-m", "bench.procrastinate_io_worker", url, str(CONCURRENCY)]
    subprocess.run([sys.executable, "-m", "bench.procrastinate_io_worker", "--schema", url],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pro_insert = ("INSERT INTO procrastinate_jobs (queue_name, task_name, args) "
                  "SELECT 'default', 'io_sleep', '{}' FROM generate_series(1, %s)")
    times: dict[str, list[float]] = {"bgjobs": [], "pgqueuer": [], "procrastinate": []}
    progress_missing = 0
    # Both stay up (idle, each on its own table) so that runs interleave after one warm-up.
    with psycopg.connect(url, autocommit=True) as c, _process(bg_argv, env), \
            _process(pgq_argv), _process(pro_argv):
        for _ in range(runs + 1):
            times["bgjobs"].append(_drain(c, bg_insert, BG_LEFT, jobs))
            progress_missing += c.execute(
                "SELECT count(*) FROM background_jobs WHERE progress->>'stage' IS DISTINCT "
                "FROM 'done'").fetchone()[0]  # type: ignore[index]
            c.execute("TRUNCATE background_jobs")
            times["pgqueuer"].append(_drain(c, pgq_insert, PGQ_LEFT, jobs))
            c.execute("TRUNCATE pgqueuer, pgqueuer_log")
            times["procrastinate"].append(_drain(c, pro_insert, PRO_LEFT, jobs))
            c.execute("TRUNCATE procrastinate_jobs CASCADE")
    warm_up = {k: round(v.pop(0), 3) for k, v in times.items()}
    bg, pgq = statistics.median(times["bgjobs"]), statistics.median(times["pgqueuer"])
    pro = statistics.median(times["procrastinate"])
    return {
        "versions": versions(), "jobs": jobs, "await_s": 0.1, "concurrency": CONCURRENCY,
        "pgqueuer_batch_size": PGQ_BATCH, "floor_s": round(jobs * 0.1 / CONCURRENCY, 3),
        "bgjobs_s": round(bg, 3), "pgqueuer_s": round(pgq, 3),
        "bgjobs_jobs_per_s": round(jobs / bg), "pgqueuer_jobs_per_s": round(jobs / pgq),
        "bgjobs_vs_pgqueuer": round(pgq / bg, 2),
        "procrastinate_s": round(pro, 3), "procrastinate_jobs_per_s": round(jobs / pro),
        "bgjobs_vs_procrastinate": round(pro / bg, 2),
        "bgjobs_jobs_without_final_progress": progress_missing,
        "runs_s": {k: [round(v, 3) for v in vs] for k, vs in times.items()},
        "warm_up_s": warm_up,
        "in_flight": in_flight(url, 2000 if quick else 10_000),
    }
