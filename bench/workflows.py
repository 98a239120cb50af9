"""Workflows: what waiting for other jobs costs (docs/workflows.md, docs/benchmarks.md).

One `bgjobs worker --concurrency 2` on a scratch database, and, each a median over runs:
- fan-in: N parents and one child after all of them, all run by the worker; the time from the
  last parent's completion to the child's start (Postgres clocks), against the wake-up of an
  independent job into the same idle worker;
- fan-out: one parent and N children after it; how long the statement completing the parent
  takes (it releases all N), and the same statement with no children;
- drain: J jobs in pairs (each second job after the first) against J independent jobs, jobs/s.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import time
from typing import Any

import psycopg

from bench.workers import _drain, _wakeup_ms, drained_after
from tests.procs import BGJOBS, ROOT


def run(url: str, runs: int = 3, quick: bool = False) -> dict[str, Any]:
    from bench.common import bench_database

    fan, jobs = (1_000, 4_000) if quick else (10_000, 20_000)
    with bench_database(url) as db, _worker(db) as worker, \
            psycopg.connect(db, autocommit=True) as c:
        _drain(c, 200, worker)  # warm up
        baseline = [_wakeup_ms(c, worker) for _ in range(max(5, runs))]
        release = [_fan_in_release_ms(c, worker, fan) for _ in range(runs)]
        fan_out = [_fan_out_ms(c, fan) for _ in range(runs)]
        independent, paired = [], []
        for _ in range(runs):
            c.execute("TRUNCATE background_jobs CASCADE")
            independent.append(jobs / _drain(c, jobs, worker))
            c.execute("TRUNCATE background_jobs CASCADE")
            paired.append(jobs / _drain_pairs(c, jobs, worker))
    ratio = statistics.median(paired) / statistics.median(independent)
    return {
        "fan": fan,
        "fan_in_release_to_start_ms": _ms(release),
        "independent_wakeup_ms": _ms(baseline),
        "fan_out_insert_ms": _ms([f[0] for f in fan_out]),
        "fan_out_parent_completion_ms": _ms([f[1] for f in fan_out]),
        "no_children_completion_ms": _ms([f[2] for f in fan_out]),
        "drain_jobs": jobs,
        "independent_jobs_per_s": round(statistics.median(independent)),
        "paired_jobs_per_s": round(statistics.median(paired)),
        "paired_over_independent": round(ratio, 2),
        "target": "release-to-start <= 10 ms; paired drain >= 0.8x independent",
    }


def _ms(values: list[float]) -> dict[str, Any]:
    return {"median": round(statistics.median(values), 1), "runs": [round(v, 1) for v in values]}


class _worker:
    """A `bgjobs worker --concurrency 2` on ``db`` for the duration of a with-block."""

    def __init__(self, db: str) -> None:
        self.db = db

    def __enter__(self) -> subprocess.Popen[Any]:
        env = {**os.environ, "DATABASE_URL": self.db, "PYTHONUNBUFFERED": "1"}
        self.log = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(
            [BGJOBS, "worker", "--concurrency", "2", "--log-level", "warning"],
            env=env, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT)
        return self.proc

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


def _fan_in_release_ms(c: psycopg.Connection, worker: subprocess.Popen[Any], fan: int) -> float:
    """N noop parents run by the worker, one noop child after all of them: milliseconds from
    the last parent's completion to the child's start (both Postgres clocks)."""
    c.execute("TRUNCATE background_jobs CASCADE")
    with c.transaction():  # the worker sees parents and child at once
        c.execute("CREATE TEMP TABLE IF NOT EXISTS parents (id uuid)")
        c.execute("TRUNCATE parents")
        c.execute("WITH p AS (INSERT INTO background_jobs (job_type) "
                  "SELECT 'noop' FROM generate_series(1, %s) RETURNING id) "
                  "INSERT INTO parents SELECT id FROM p", [fan])
        child = c.execute("INSERT INTO background_jobs (job_type, depends_on) "
                          "SELECT 'noop', array_agg(id) FROM parents RETURNING id").fetchone()[0]
    deadline = time.perf_counter() + max(60.0, fan / 200)
    while True:
        row = c.execute(
            "SELECT extract(epoch FROM c.started_at - (SELECT max(finished_at) FROM "
            "background_jobs WHERE id = ANY(c.depends_on))) * 1000 "
            "FROM background_jobs c WHERE c.id = %s AND c.started_at IS NOT NULL",
            [child]).fetchone()
        if row:
            return float(row[0])
        if worker.poll() is not None or time.perf_counter() > deadline:
            raise RuntimeError("the released child did not start")
        time.sleep(0.01)


def _fan_out_ms(c: psycopg.Connection, fan: int) -> tuple[float, float, float]:
    """Milliseconds to insert N children of one parent, to complete that parent (releasing
    them), and to complete a parent with none."""
    c.execute("TRUNCATE background_jobs CASCADE")
    parent, alone = (r[0] for r in c.execute(
        "INSERT INTO background_jobs (job_type) VALUES ('bench_parent'), ('bench_parent') "
        "RETURNING id").fetchall())
    # Children of a type no worker runs: this times the release, not the drain after it.
    start = time.perf_counter()
    c.execute("INSERT INTO background_jobs (job_type, depends_on) "
              "SELECT 'bench_child', ARRAY[%s::uuid] FROM generate_series(1, %s)", [parent, fan])
    timings = [(time.perf_counter() - start) * 1000]
    for job_id in (parent, alone):
        start = time.perf_counter()
        c.execute("UPDATE background_jobs SET status = 'complete' WHERE id = %s", [job_id])
        timings.append((time.perf_counter() - start) * 1000)
    waiting = c.execute("SELECT count(*) FROM background_jobs WHERE waiting_for > 0").fetchone()
    assert waiting[0] == 0, "the fan-out did not release every child"
    return timings[0], timings[1], timings[2]


def _drain_pairs(c: psycopg.Connection, jobs: int, worker: subprocess.Popen[Any]) -> float:
    """Seconds to drain ``jobs`` noop jobs in pairs, the second of each after the first."""
    c.execute("CREATE TEMP TABLE IF NOT EXISTS firsts (id uuid)")
    c.execute("TRUNCATE firsts")
    with c.transaction():  # workers see both halves at once, at the commit
        c.execute("WITH i AS (INSERT INTO background_jobs (job_type) "
                  "SELECT 'noop' FROM generate_series(1, %s) RETURNING id) "
                  "INSERT INTO firsts SELECT id FROM i", [jobs // 2])
        c.execute("INSERT INTO background_jobs (job_type, depends_on) "
                  "SELECT 'noop', ARRAY[id] FROM firsts")
    # From the commit, as bench.workers._drain times its drain.
    return drained_after(c, jobs, worker, time.perf_counter(), max(60.0, jobs / 300))
