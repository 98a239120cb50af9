"""Through PgBouncer in transaction mode (its default settings) against straight to Postgres.

- ``enqueue``: ``bgjobs.enqueue("noop")``, one job per call on one thread, jobs/s:
  ``direct`` (prepared statements, which bgjobs keeps on direct connections),
  ``direct_unprepared`` (the same with prepare_threshold=None: what the statement costs
  without its saved plan), ``pgbouncer`` (unprepared, plus the pooler's hop).
- ``drain``: ``claim_specs`` + ``complete`` of waiting noop jobs, jobs/s, in batches of 64
  (as a busy supervisor claims) and one at a time (as an idle one wakes per job).

Runs interleaved, medians; the pooler is started by tests/pgbouncer.py (Debian's package).
The bench database runs with synchronous_commit off for this section: on a shared machine's
disk, waiting for each commit's flush drowned the difference between the paths.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from bgjobs.core.db import make_pool
from bgjobs.core.jobs import Attempt, Completion
from bgjobs.core.store import Store
from bgjobs.tasks import enqueue as enqueue_mod

PATHS = ["direct", "direct_unprepared", "pgbouncer"]


def _reset(url: str, waiting: int = 0) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE background_jobs")
        if waiting:
            conn.execute("INSERT INTO background_jobs (job_type) "
                         "SELECT 'noop' FROM generate_series(1, %s)", (waiting,))
            conn.execute("ANALYZE background_jobs")


def _sync_commit(url: str, value: str | None) -> None:
    """Set (or with None, reset) synchronous_commit for new connections to the bench database."""
    with psycopg.connect(url, autocommit=True) as conn:
        name = conn.info.dbname
        if value is None:
            conn.execute(sql.SQL("ALTER DATABASE {} RESET synchronous_commit").format(
                sql.Identifier(name)))
        else:
            conn.execute(sql.SQL("ALTER DATABASE {} SET synchronous_commit = {}").format(
                sql.Identifier(name), sql.Literal(value)))


def _enqueue(store: Store, jobs: int) -> float:
    """Seconds to enqueue ``jobs`` one by one."""
    start = time.perf_counter()
    for n in range(jobs):
        enqueue_mod.enqueue("noop", {"echo": n}, store=store)
    return time.perf_counter() - start


def _drain(url: str, store: Store, jobs: int, batch: int) -> float:
    """Seconds to claim and complete ``jobs`` waiting jobs, ``batch`` per claim."""
    _reset(url, jobs)
    start = time.perf_counter()
    while claimed := store.claim_specs("bench", ["noop"], limit=batch):
        store.complete([Completion(Attempt(job.id, "bench", job.attempt), {}, None)
                        for job in claimed])
    return time.perf_counter() - start


def _rates(chunks: int, chunk: int, timed: Callable[[str], float]) -> dict[str, float]:
    """Jobs/s per path, the paths taking turns chunk by chunk (in a rotating order), so that
    the load of a shared machine, which changes by the second, falls on all of them alike."""
    spent = dict.fromkeys(PATHS, 0.0)
    for n in range(chunks):
        for name in PATHS[n % 3:] + PATHS[:n % 3]:
            spent[name] += timed(name)
    return {name: chunks * chunk / seconds for name, seconds in spent.items()}


def run(url: str, runs: int = 3, quick: bool = False) -> dict[str, Any]:
    from tests.pgbouncer import installed, pgbouncer  # Debian's pgbouncer (tests and bench)

    if not installed():
        return {"skipped": "pgbouncer is not installed (apt-get install pgbouncer)"}
    jobs, drained = (1000, 3000) if quick else (3000, 10000)
    _sync_commit(url, "off")
    with pgbouncer(url, "transaction") as pooler:
        urls = {"direct": url, "direct_unprepared": url, "pgbouncer": pooler.url(url)}
        stores = {name: Store(make_pool(
            u, min_size=1, max_size=2, open_wait=True, name="bench",
            **({"prepare_threshold": None} if name == "direct_unprepared" else {})))
            for name, u in urls.items()}
        measures: dict[str, Callable[[], dict[str, float]]] = {
            "enqueue": lambda: _rates(jobs // 100, 100,
                                      lambda name: _enqueue(stores[name], 100)),
            "drain_batch_64": lambda: _rates(drained // 640, 640,
                                             lambda name: _drain(url, stores[name], 640, 64)),
            "drain_one_by_one": lambda: _rates(drained // 500, 100,
                                               lambda name: _drain(url, stores[name], 100, 1)),
        }
        rates: dict[str, dict[str, list[float]]] = {m: {p: [] for p in PATHS} for m in measures}
        try:
            for store in stores.values():  # warm up: connections open, statements prepared
                _enqueue(store, 100)
            for _ in range(runs):
                for measure, once in measures.items():
                    _reset(url)
                    for name, rate in once().items():
                        rates[measure][name].append(rate)
        finally:
            for store in stores.values():
                store.pool.close()
            _reset(url)
            _sync_commit(url, None)
    out: dict[str, Any] = {"enqueue_jobs": jobs, "drain_jobs": drained,
                           "pgbouncer": "transaction mode, default settings"}
    for measure, by_path in rates.items():
        medians = {name: statistics.median(values) for name, values in by_path.items()}
        for name, value in medians.items():
            out[f"{measure}_{name}_jobs_per_s"] = round(value)
        out[f"{measure}_pgbouncer_vs_direct"] = round(medians["pgbouncer"] / medians["direct"], 2)
    out["runs"] = {m: {p: [round(v) for v in vs] for p, vs in by_path.items()}
                   for m, by_path in rates.items()}
    return out
