"""The API stays responsive while CPU-bound jobs fill every worker process.

A real stack on this machine: `bgjobs api` (its defaults), and `bgjobs worker` with one
process per CPU running CPU-bound ``bench_spin`` jobs (one more than there are processes, so
every process stays busy). Meanwhile one client checks a job's progress the way a front end
does, ``GET /api/jobs/<id>``, ``requests`` times, 10 ms apart, and times each request.
Measured with the job processes at the default nice level (BGJOBS_WORKER_NICE=10), at 0 (no
lever), and with no jobs at all (this machine's floor), interleaved in the same run.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg

from bench.common import percentile, user_with_job
from tests.conftest import url_env
from tests.procs import BGJOBS, Proc, free_port, wait_http, wait_until


def _once(url: str, token: str, job_id: str, nice: int | None, requests: int,
          tmp: Path) -> dict[str, Any]:
    """One measurement; ``nice`` None: no worker and no jobs (the machine's floor)."""
    cpus = os.cpu_count() or 2
    port = free_port()
    env = {**url_env(url), "BGJOBS_API_BIND": f"127.0.0.1:{port}", "BGJOBS_SECRET_KEY": "bench",
           "BGJOBS_ACCESS_LOG": "/dev/null", "BGJOBS_TASK_MODULES": "bench.tasks",
           "BGJOBS_WORKER_NICE": str(nice or 0), "BGJOBS_LOG_LEVEL": "WARNING"}
    api = Proc([BGJOBS, "api"], env, tmp / f"api{nice}.log")
    worker = None if nice is None else Proc(
        [BGJOBS, "worker", "--concurrency", str(cpus), "--types", "bench_spin"], env,
        tmp / f"worker{nice}.log")
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/healthz", api)
        if worker is not None:
            with psycopg.connect(url, autocommit=True) as c:
                c.execute("INSERT INTO background_jobs (job_type, params) SELECT 'bench_spin', "
                          "jsonb_build_object('seconds', 60) FROM generate_series(1, %s)",
                          [cpus + 1])
                wait_until(lambda: c.execute(
                    "SELECT count(*) FROM background_jobs WHERE job_type = 'bench_spin' "
                    "AND status = 'running'").fetchone()[0] == cpus, 30,
                    "every worker process busy", worker)
        time.sleep(1.0)
        times, errors = [], 0
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"},
                          timeout=10) as http:
            for _ in range(20):  # warm up every gunicorn worker's pool
                http.get(f"/api/jobs/{job_id}")
            for _ in range(requests):
                start = time.perf_counter()
                r = http.get(f"/api/jobs/{job_id}")
                times.append((time.perf_counter() - start) * 1000)
                errors += r.status_code != 200
                time.sleep(0.01)
    finally:
        if worker is not None:
            worker.stop()
        api.stop()
        with psycopg.connect(url, autocommit=True) as c:
            c.execute("DELETE FROM background_jobs WHERE job_type = 'bench_spin'")
    return {"p50_ms": round(percentile(times, 50), 2), "p99_ms": round(percentile(times, 99), 2),
            "errors": errors}


def run(url: str, runs: int = 3, quick: bool = False) -> dict[str, Any]:
    token, job_id = user_with_job(url, "heavy", "demo")
    requests = 100 if quick else 300
    out: dict[str, Any] = {"requests": requests, "worker_processes": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        by_nice: dict[int | None, list[dict[str, Any]]] = {10: [], 0: [], None: []}
        for _ in range(runs):  # interleaved, so a noisy moment hits both alike
            for nice, rows in by_nice.items():
                rows.append(_once(url, token, job_id, nice, requests, Path(tmp)))
        for nice, rows in by_nice.items():
            out["no_jobs" if nice is None else f"nice{nice}"] = {
                "p50_ms": round(statistics.median(r["p50_ms"] for r in rows), 2),
                "p99_ms": round(statistics.median(r["p99_ms"] for r in rows), 2),
                "errors": sum(r["errors"] for r in rows), "runs": rows}
    return out
