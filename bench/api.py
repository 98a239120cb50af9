"""API capacity: the seed's set-up (one gunicorn worker, one thread) against bgjobs's default
(2 workers × 4 threads), both serving "check progress" requests for the same job."""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import user_with_job
from tests.conftest import url_env
from tests.procs import BGJOBS, Proc, free_port, wait_http

CLIENTS = 16
REQUESTS_PER_CLIENT = 150


def _load(base: str, token: str, job_id: str) -> float:
    """Requests per second for CLIENTS threads each sending REQUESTS_PER_CLIENT GETs."""
    errors: list[str] = []
    start = threading.Barrier(CLIENTS + 1)

    def client() -> None:
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"},
                          timeout=30) as http:
            start.wait()
            for _ in range(REQUESTS_PER_CLIENT):
                r = http.get(f"/api/jobs/{job_id}")
                if r.status_code != 200:
                    errors.append(str(r.status_code))

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    start.wait()
    began = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    if errors:
        raise RuntimeError(f"{len(errors)} failed requests, e.g. {errors[:3]}")
    return CLIENTS * REQUESTS_PER_CLIENT / elapsed


def run(url: str, runs: int = 5) -> dict[str, Any]:
    token, job_id = user_with_job(url, "bench", "noop")
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, workers, threads in [("seed_1x1", 1, 1), ("bgjobs_2x4", 2, 4)]:
            port = free_port()
            env = {**url_env(url), "BGJOBS_API_BIND": f"127.0.0.1:{port}",
                   "BGJOBS_API_WORKERS": str(workers), "BGJOBS_API_THREADS": str(threads),
                   "BGJOBS_SECRET_KEY": "bench", "BGJOBS_ACCESS_LOG": "/dev/null"}
            proc = Proc([BGJOBS, "api"], env, Path(tmp) / f"{label}.log")
            try:
                wait_http(f"http://127.0.0.1:{port}/healthz", proc)
                base = f"http://127.0.0.1:{port}"
                _load(base, token, job_id)  # warm up every worker's pool
                results[label] = [_load(base, token, job_id) for _ in range(runs)]
            finally:
                proc.stop()
    seed, ours = (statistics.median(results[k]) for k in ("seed_1x1", "bgjobs_2x4"))
    return {
        "clients": CLIENTS,
        "requests_per_run": CLIENTS * REQUESTS_PER_CLIENT,
        "seed_1x1_req_per_s": round(seed),
        "bgjobs_2x4_req_per_s": round(ours),
        "ratio_vs_seed": round(ours / seed, 2),
        "runs": {k: [round(v) for v in vs] for k, vs in results.items()},
    }
