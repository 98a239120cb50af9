"""Enqueue throughput: one job per transaction through bgjobs.enqueue, against the path it
replaced and against plain SQL, and a batch through bgjobs.enqueue_many; all in one run.

- ``bgjobs_enqueue``: ``bgjobs.enqueue("noop", {...})``, the public path (one statement).
- ``old_path``: what enqueueing cost before (a pool that checks each connection it lends, then
  BEGIN, INSERT ... RETURNING *, COMMIT): four round trips.
- ``plain_sql``: ``INSERT ... RETURNING id`` on one autocommit connection, the floor.
- ``enqueue_many``: ``bgjobs.enqueue_many("noop", [10,000 params])``, one statement.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from bgjobs.core.db import make_pool
from bgjobs.core.store import Store
from bgjobs.tasks import enqueue as enqueue_mod

SINGLE_JOBS = 2_000
BLOCK = 50  # jobs a path enqueues before the next path's turn
BATCH_JOBS = 10_000
OLD_INSERT = """INSERT INTO background_jobs (job_type, user_id, params, priority, run_after,
                                             max_attempts, idempotency_key, exclusive_key)
                VALUES (%s, NULL, %s, 0, now(), 3, NULL, NULL) RETURNING *"""


def _reset(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE background_jobs")


def _rate(url: str, jobs: int, once: Any) -> float:
    _reset(url)
    start = time.perf_counter()
    for n in range(jobs):
        once(n)
    return jobs / (time.perf_counter() - start)


def _rates(url: str, jobs: int, paths: dict[str, Any]) -> dict[str, float]:
    """Each path's rate over the same stretch of time: the paths take turns every BLOCK jobs.

    A commit waits for the WAL's flush, whose time moves by tens of percent from one second
    to the next on a shared disk; paths run one after the other for a second each compared
    the disk's moments more than the paths (single-enqueue ratios from 0.67x to 0.95x within
    one run), so they take turns.
    """
    _reset(url)
    spent = dict.fromkeys(paths, 0.0)
    for first in range(0, jobs, BLOCK):
        for name, once in paths.items():
            start = time.perf_counter()
            for n in range(first, min(first + BLOCK, jobs)):
                once(n)
            spent[name] += time.perf_counter() - start
    return {name: jobs / seconds for name, seconds in spent.items()}


def run(url: str, runs: int = 5, jobs: int = SINGLE_JOBS,
        batch: int = BATCH_JOBS) -> dict[str, Any]:
    store = Store(make_pool(url, min_size=1, max_size=2, open_wait=True, name="bench"))
    old_pool = ConnectionPool(url, min_size=1, max_size=2, open=True,
                              check=ConnectionPool.check_connection,
                              kwargs={"autocommit": True})
    plain = psycopg.connect(url, autocommit=True)

    def bgjobs_enqueue(n: int) -> None:
        enqueue_mod.enqueue("noop", {"echo": n}, store=store)

    def old_path(n: int) -> None:
        with old_pool.connection() as conn, conn.transaction():
            conn.execute(OLD_INSERT, ("noop", Jsonb({"echo": n}))).fetchone()

    def plain_sql(n: int) -> None:
        plain.execute("INSERT INTO background_jobs (job_type, params) VALUES (%s, %s) "
                      "RETURNING id", ("noop", Jsonb({"echo": n}))).fetchone()

    def many() -> float:
        _reset(url)
        params = [{"echo": n} for n in range(batch)]
        start = time.perf_counter()
        made = enqueue_mod.enqueue_many("noop", params, store=store)
        elapsed = time.perf_counter() - start
        assert len(made) == batch
        return batch / elapsed

    paths = {"bgjobs_enqueue": bgjobs_enqueue, "old_path": old_path, "plain_sql": plain_sql}
    rates: dict[str, list[float]] = {name: [] for name in paths}
    batches: list[float] = []
    try:
        for once in paths.values():
            _rate(url, 200, once)  # warm up: connections open, statements prepared
        for _ in range(runs):  # interleaved, so a noisy moment hits every path alike
            for name, rate in _rates(url, jobs, paths).items():
                rates[name].append(rate)
            batches.append(many())
    finally:
        store.pool.close()
        old_pool.close()
        plain.close()
        _reset(url)
    medians = {name: statistics.median(values) for name, values in rates.items()}
    return {
        "jobs_per_run": jobs,
        **{f"{name}_jobs_per_s": round(value) for name, value in medians.items()},
        "bgjobs_vs_old_path": round(medians["bgjobs_enqueue"] / medians["old_path"], 2),
        "bgjobs_vs_plain_sql": round(medians["bgjobs_enqueue"] / medians["plain_sql"], 2),
        "bgjobs_vs_plain_sql_per_run": [round(b / p, 2) for b, p in
                                         zip(rates["bgjobs_enqueue"], rates["plain_sql"],
                                             strict=True)],
        "enqueue_many_batch": batch,
        "enqueue_many_jobs_per_s": round(statistics.median(batches)),
        "runs": {**{k: [round(v) for v in vs] for k, vs in rates.items()},
                 "enqueue_many": [round(v) for v in batches]},
    }
