"""`make bench`: throughput and latency figures, medians over several runs.

Runs against DATABASE_URL's server or the embedded cluster, in a database of its own that it
drops afterwards. Figures compare against a baseline measured in the same run, as ratios,
because these machines are shared and noisy. Sections: store (claim/finish statements),
enqueue (bench/enqueue.py), workers (drain and wake-up latency, bench/workers.py), api
(requests/s, bench/api.py). `python -m bench --only enqueue --runs 3` runs one of them.
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from bgjobs.core import migrate
from bgjobs.core.db import make_pool
from bgjobs.core.jobs import Attempt, Completion
from bgjobs.core.store import Store
from tests.conftest import _server_url


@contextmanager
def bench_database(server: str | None = None) -> Iterator[str]:
    """A migrated scratch database on ``server`` (default: DATABASE_URL's or the embedded)."""
    server = make_conninfo(server, dbname="postgres") if server else _server_url()
    name = f"bgjobs_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_conninfo(server, dbname=name)
    try:
        with psycopg.connect(url) as conn:
            migrate.apply(conn)
        yield url
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def reset(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE background_jobs")


def enqueue_noops(url: str, count: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO background_jobs (job_type) "
                     "SELECT 'noop' FROM generate_series(1, %s)", (count,))
        # A steady queue has fresh statistics; a bulk insert into an emptied table does not.
        conn.execute("ANALYZE background_jobs")


def median_of(runs: int, once: Callable[[], float]) -> tuple[float, list[float]]:
    values = [once() for _ in range(runs)]
    return statistics.median(values), values


def store_section(url: str, runs: int, jobs: int) -> dict[str, Any]:
    """Jobs/s through claim_specs + complete: one job per statement vs batches of 64."""
    pool = make_pool(url, min_size=2, max_size=2, open_wait=True)
    store = Store(pool)

    def drain(batch: int) -> float:
        reset(url)
        enqueue_noops(url, jobs)
        start = time.perf_counter()
        while claimed := store.claim_specs("bench", ["noop"], limit=batch):
            store.complete([Completion(Attempt(job.id, "bench", job.attempt), {}, None)
                            for job in claimed])
        return jobs / (time.perf_counter() - start)

    try:
        single, single_runs = median_of(runs, lambda: drain(1))
        batched, batched_runs = median_of(runs, lambda: drain(64))
    finally:
        pool.close()
    return {
        "jobs": jobs,
        "one_job_per_statement_jobs_per_s": round(single),
        "batch_64_jobs_per_s": round(batched),
        "batch_speedup": round(batched / single, 2),
        "runs": {"single": [round(v) for v in single_runs],
                 "batched": [round(v) for v in batched_runs]},
    }


SECTIONS: dict[str, str] = {
    "enqueue": "bench.enqueue",
    "workers": "bench.workers",
    "api": "bench.api",
    "seed_app": "bench.seed_app",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per figure (median reported)")
    parser.add_argument("--jobs", type=int, default=5000, help="jobs per store run")
    parser.add_argument("--only", help="comma-separated sections: store,workers,api")
    args = parser.parse_args()
    only = set(args.only.split(",")) if args.only else {"store", *SECTIONS}
    report: dict[str, Any] = {}
    with bench_database() as url:
        if "store" in only:
            report["store"] = store_section(url, args.runs, args.jobs)
            print(json.dumps({"store": report["store"]}, indent=2), flush=True)
        for name, module_name in SECTIONS.items():
            if name not in only:
                continue
            module = importlib.import_module(module_name)
            reset(url)
            report[name] = module.run(url, runs=args.runs)
            print(json.dumps({name: report[name]}, indent=2), flush=True)
    print("\nsummary:", json.dumps(report))


if __name__ == "__main__":
    main()
