"""Progress checks during a heavy job: the seed's single-worker design against its app migrated
to bgjobs (examples/seed_app).

- seed: examples/seed_app/before under its gunicorn settings (1 sync worker); the job runs in a
  thread of that process and its state is a dict.
- bgjobs: examples/seed_app started by its run.py (4 gthread workers x 4 threads, `bgjobs
  worker`, `bgjobs events`); the job runs in a worker process, every check reads Postgres.

Each runs an optimization job of 200 generations (longer than the checks; cancelled after them)
while CLIENTS clients check its progress through the seed's route, CHECKS per run, each on a new
connection. Figures: p50 and p99 latency over all runs, and answers that were not 200.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

from psycopg.conninfo import make_conninfo

from tests.conftest import migrated_database
from tests.seed_app_client import DEMO, EXAMPLE, SeedClient, add_user, percentiles, start

CLIENTS = 8
CHECKS = 200
HEAVY = {"generations": 200}
DESIGNS = {
    "seed_1_sync_worker": [sys.executable, "-m", "gunicorn", "-c", "before/gunicorn.conf.py"],
    "bgjobs_4x4_gthread": [],  # run.py, the example's one command
}


def _measure(url: str, argv: list[str], log: Path, runs: int) -> dict[str, Any]:
    example = start(url, log, *argv, SECRET_KEY="bench")
    try:
        client = SeedClient(example.base)
        job = client.start("optimization", HEAVY)
        client.wait_progress("optimization", job, "the heavy job under way",
                             lambda p: p["status"] == "running" and p["progress"])
        checks = [c for _ in range(runs)
                  for c in client.check_progress("optimization", job, CLIENTS, CHECKS)]
        client.post(f"/api/optimization/cancel/{job}")
    finally:
        example.proc.stop(timeout=60)
    return {**percentiles(checks), "checks": len(checks),
            "not_200": sum(c.status != 200 for c in checks),
            "still_running": sum(c.body.get("status") == "running" for c in checks),
            "processes_answering": len({c.pid for c in checks})}


def run(url: str, runs: int = 5) -> dict[str, Any]:
    schema = (EXAMPLE / "schema.sql").read_text()
    report: dict[str, Any] = {"clients": CLIENTS, "checks_per_run": CHECKS, "job": HEAVY}
    with migrated_database(make_conninfo(url, dbname="postgres"), schema) as db, \
            tempfile.TemporaryDirectory() as tmp:
        add_user(db, *DEMO)
        for name, argv in DESIGNS.items():
            report[name] = _measure(db, argv, Path(tmp) / f"{name}.log", runs)
    seed, ours = (report[name] for name in DESIGNS)
    report["p50_speedup"] = round(seed["p50_ms"] / ours["p50_ms"], 1)
    report["p99_speedup"] = round(seed["p99_ms"] / ours["p99_ms"], 1)
    return report
