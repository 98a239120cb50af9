"""IO-bound jobs (issue 18): N jobs that each await 100 ms, bgjobs beside pgqueuer, one process
each, the same number of jobs in flight (bench/io_tasks.py's CONCURRENCY).

bgjobs: ``bgjobs worker --concurrency 1`` with the async type ``bench_io_sleep``, which runs in
its IO process; every job reports progress before and after its wait. pgqueuer: one process of
bench/pgq_io_consumer.py, asyncpg, ``max_concurrent_tasks`` = CONCURRENCY and ``batch_size`` =
CONCURRENCY / 5 (it must be at most half of it; a fifth refills sooner). Each figure is the
median time from the commit of one INSERT of all N jobs until none is left, the two queues
up side by side and interleaved run by run, after one warm-up run each. The floor is
N x 0.1 s / CONCURRENCY.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from bench.common import as_url, quick_sizes
from bench.io_tasks import CONCURRENCY
from bench.peers import install_pgqueuer, versions
from tests.procs import BGJOBS, ROOT

PGQ_BATCH = CONCURRENCY // 5
BG_LEFT = "SELECT count(*) FROM background_jobs WHERE status <> 'complete'"
PGQ_LEFT = "SELECT count(*) FROM pgqueuer"


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
    times: dict[str, list[float]] = {"bgjobs": [], "pgqueuer": []}
    progress_missing = 0
    # Both stay up (idle, each on its own table) so that runs interleave after one warm-up.
    with psycopg.connect(url, autocommit=True) as c, _process(bg_argv, env), \
            _process(pgq_argv):
        for _ in range(runs + 1):
            times["bgjobs"].append(_drain(c, bg_insert, BG_LEFT, jobs))
            progress_missing += c.execute(
                "SELECT count(*) FROM background_jobs WHERE progress->>'stage' IS DISTINCT "
                "FROM 'done'").fetchone()[0]  # type: ignore[index]
            c.execute("TRUNCATE background_jobs")
            times["pgqueuer"].append(_drain(c, pgq_insert, PGQ_LEFT, jobs))
            c.execute("TRUNCATE pgqueuer, pgqueuer_log")
    warm_up = {k: round(v.pop(0), 3) for k, v in times.items()}
    bg, pgq = statistics.median(times["bgjobs"]), statistics.median(times["pgqueuer"])
    return {
        "versions": versions(), "jobs": jobs, "await_s": 0.1, "concurrency": CONCURRENCY,
        "pgqueuer_batch_size": PGQ_BATCH, "floor_s": round(jobs * 0.1 / CONCURRENCY, 3),
        "bgjobs_s": round(bg, 3), "pgqueuer_s": round(pgq, 3),
        "bgjobs_jobs_per_s": round(jobs / bg), "pgqueuer_jobs_per_s": round(jobs / pgq),
        "bgjobs_vs_pgqueuer": round(pgq / bg, 2),
        "bgjobs_jobs_without_final_progress": progress_missing,
        "runs_s": {k: [round(v, 3) for v in vs] for k, vs in times.items()},
        "warm_up_s": warm_up,
    }
