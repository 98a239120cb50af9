"""Worker throughput and wake-up latency with `bgjobs worker --concurrency 2`.

``run(url)`` makes a scratch database on the server of ``url``, starts one worker supervisor
with two processes, then several times: enqueue K noop jobs in one INSERT ... SELECT
generate_series, and time from that commit until every job is complete. Returns the median,
and the median wake-up latency of single jobs enqueued while the workers are idle (from the
enqueue to ``started_at``, both Postgres clocks).
Run it alone with ``python -m bench.workers [URL]`` (default: DATABASE_URL or the
embedded cluster).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import psycopg

from tests.procs import BGJOBS, ROOT


def run(url: str, jobs: int = 20_000, runs: int = 5, concurrency: int = 2) -> dict[str, Any]:
    """Median no-op jobs/s over ``runs`` drains of ``jobs`` jobs each."""
    from bench.common import bench_database

    with bench_database(url) as db:
        rates, wakeups = _drain_runs(db, jobs, runs, concurrency)
    return {
        "benchmark": "worker_noop_drain",
        "jobs_per_run": jobs,
        "concurrency": concurrency,
        "runs": [round(r) for r in rates],
        "median_jobs_per_s": round(statistics.median(rates)),
        "idle_wakeup_ms": [round(w, 1) for w in wakeups],
        "median_idle_wakeup_ms": round(statistics.median(wakeups), 1),
    }


def _drain_runs(db: str, jobs: int, runs: int,
                concurrency: int) -> tuple[list[float], list[float]]:
    env = {**os.environ, "DATABASE_URL": db, "PYTHONUNBUFFERED": "1"}
    with tempfile.TemporaryFile("w+") as log:
        worker = subprocess.Popen(
            [BGJOBS, "worker", "--concurrency", str(concurrency), "--log-level", "warning"],
            env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            rates = []
            with psycopg.connect(db, autocommit=True) as c:
                _drain(c, 200, worker)  # warm up: children started, connections open
                for _ in range(runs):
                    rates.append(jobs / _drain(c, jobs, worker))
                    c.execute("TRUNCATE background_jobs")
                wakeups = [_wakeup_ms(c, worker) for _ in range(max(5, runs))]
            return rates, wakeups
        except BaseException:
            log.seek(0)
            lines = [line for line in log.read().splitlines() if "reaped job" not in line]
            sys.stderr.write("\n".join(lines)[-6000:])
            raise
        finally:
            worker.terminate()
            worker.wait(30)


def _drain(c: psycopg.Connection, jobs: int, worker: subprocess.Popen[Any]) -> float:
    c.execute("INSERT INTO background_jobs (job_type) SELECT 'noop' FROM generate_series(1, %s)",
              [jobs])
    return drained_after(c, jobs, worker, time.perf_counter(), max(60.0, jobs / 500))


def drained_after(c: psycopg.Connection, jobs: int, worker: subprocess.Popen[Any],
                  start: float, limit: float) -> float:
    """Seconds from ``start`` until no job is left incomplete (at most ``limit`` seconds)."""
    deadline = start + limit
    while True:
        left = c.execute("SELECT count(*) FROM background_jobs WHERE status <> 'complete'"
                         ).fetchone()[0]
        if left == 0:
            return time.perf_counter() - start
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited with {worker.returncode}")
        if time.perf_counter() > deadline:
            raise RuntimeError(f"{left} of {jobs} jobs still not complete")
        time.sleep(0.02)  # the drain itself is what we time; this only samples it


def _wakeup_ms(c: psycopg.Connection, worker: subprocess.Popen[Any]) -> float:
    """Enqueue one job into an idle worker; milliseconds until it started."""
    time.sleep(0.3)  # let the worker go idle: this measures a wake-up, not a busy loop
    job_id = c.execute("INSERT INTO background_jobs (job_type) VALUES ('noop') RETURNING id"
                       ).fetchone()[0]
    deadline = time.perf_counter() + 30
    while True:
        row = c.execute("SELECT extract(epoch FROM started_at - created_at) * 1000 "
                        "FROM background_jobs WHERE id = %s AND status = 'complete'",
                        [job_id]).fetchone()
        if row:
            return float(row[0])
        if worker.poll() is not None or time.perf_counter() > deadline:
            raise RuntimeError("the idle worker did not run a new job")
        time.sleep(0.005)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("url", nargs="?", default=os.environ.get("DATABASE_URL"))
    p.add_argument("--jobs", type=int, default=20_000)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--concurrency", type=int, default=2)
    args = p.parse_args()
    if args.url:
        print(json.dumps(run(args.url, args.jobs, args.runs, args.concurrency), indent=2))
        return 0
    from bgjobs.core import config, embedded

    cfg = config.load()
    cluster = embedded.Cluster(cfg.data_dir, cfg.pg_bin, cfg.pg_durable)
    started = cluster.ensure_running()
    try:
        print(json.dumps(run(cluster.url(), args.jobs, args.runs, args.concurrency), indent=2))
    finally:
        if started:
            cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

