"""`make bench`: throughput and latency figures, medians over several runs.

Runs against DATABASE_URL's server or the embedded cluster, in a database of its own that it
drops afterwards. Figures compare against a baseline measured in the same run, as ratios,
because these machines are shared and noisy: pgqueuer side by side (bench/peers.py), live
progress at scale (bench/events_load.py), many supervisors (bench/supervisors.py), progress
traffic against pgbench (bench/progress.py), the API under CPU-bound jobs
(bench/api_heavy.py), enqueues behind a migration waiting for a lock (bench/migrate_stall.py),
enqueue and drain through PgBouncer (bench/poolers.py), workflows (bench/workflows.py),
IO-bound jobs awaiting 100 ms (a sleep, a local HTTP server) by the thousand beside pgqueuer and
procrastinate (bench/io_jobs.py), and the older sections: store, enqueue, workers, api. Prints
a table,
writes every figure with versions and machine facts to bench/results/ (git-ignored).
`python -m bench --only events --quick` runs one section, smaller. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import psycopg

from bench.common import bench_database, machine
from bench.report import save, table
from bgjobs.core.db import make_pool
from bgjobs.core.jobs import Attempt, Completion
from bgjobs.core.store import Store


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


#: Section name -> (module, its run(url, runs, quick) adapter). Peers first: they are the
#: figures the others are read against.
SECTIONS: dict[str, str] = {
    "peers": "bench.peers",
    "events": "bench.events_load",
    "supervisors": "bench.supervisors",
    "progress": "bench.progress",
    "api_heavy": "bench.api_heavy",
    "enqueue": "bench.enqueue",
    "poolers": "bench.poolers",
    "workers": "bench.workers",
    "api": "bench.api",
    "seed_app": "bench.seed_app",
    "workflows": "bench.workflows",
    "migrate_stall": "bench.migrate_stall",
    "io": "bench.io_jobs",
}
QUICK = {  # the older sections' sizes for --quick
    "enqueue": {"jobs": 300, "batch": 2000},
    "workers": {"jobs": 3000},
}
NEW_STYLE = {"peers", "events", "supervisors", "progress", "api_heavy", "workflows",
             "migrate_stall", "poolers", "io"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (median reported)")
    parser.add_argument("--jobs", type=int, default=5000, help="jobs per store run")
    parser.add_argument("--only", help=f"comma-separated sections: store,{','.join(SECTIONS)}")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a quick look")
    parser.add_argument("--out", default="bench/results",
                        help="folder for the raw JSON (git-ignored)")
    args = parser.parse_args()
    only = set(args.only.split(",")) if args.only else {"store", *SECTIONS}
    unknown = only - {"store", *SECTIONS}
    if unknown:
        parser.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    report: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                              "runs": args.runs, "quick": args.quick}
    with bench_database() as url:
        report["machine"] = machine(url)
        print("postgres", report["machine"]["postgres"], json.dumps(
            report["machine"]["postgres_durability"]), flush=True)
        if "store" in only:
            report["store"] = store_section(url, args.runs, 1000 if args.quick else args.jobs)
            print(json.dumps({"store": report["store"]}, indent=2), flush=True)
        for name, module_name in SECTIONS.items():
            if name not in only:
                continue
            module = importlib.import_module(module_name)
            reset(url)
            began = time.monotonic()
            if name in NEW_STYLE:
                report[name] = module.run(url, runs=args.runs, quick=args.quick)
            else:
                report[name] = module.run(url, runs=args.runs,
                                          **(QUICK.get(name, {}) if args.quick else {}))
            report[name]["section_seconds"] = round(time.monotonic() - began)
            print(json.dumps({name: report[name]}, indent=2), flush=True)
    path = save(report, args.out)
    print("\n" + table(report))
    print(f"\nraw figures: {path}")


if __name__ == "__main__":
    main()
