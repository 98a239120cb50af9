"""How long enqueues stall while a migration waits for a lock on background_jobs held by a long
transaction: with bgjobs's lock_timeout (BGJOBS_MIGRATE_LOCK_TIMEOUT, retried) and without one
(what migrate did before). Enqueues queue behind the migration's lock request: without a timeout
for as long as the long transaction lasts, with it at most the timeout per try.

Runs in a database of its own (the migration adds a column), through the store, 3 threads.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from bgjobs.core import migrate
from bgjobs.core.db import make_pool
from bgjobs.core.store import NewJob, Store

ADD_COLUMN = "ALTER TABLE background_jobs ADD COLUMN bench_note text;\n"
THREADS = 3


def _once(server_url: str, policy: migrate.LockPolicy, hold: float) -> dict[str, Any]:
    name = f"bgjobs_bench_stall_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_conninfo(server_url, dbname=name)
    folder = Path(tempfile.mkdtemp(prefix="bgjobs-bench-stall-"))
    try:
        with psycopg.connect(url) as conn:
            migrate.apply(conn)
        shutil.copytree(str(migrate.migrations_dir()), folder / "m")
        (folder / "m" / "900_bench.sql").write_text(ADD_COLUMN)
        pool = make_pool(url, min_size=THREADS, max_size=THREADS, open_wait=True)
        store, latencies, stop = Store(pool), [], threading.Event()

        def enqueue() -> None:
            while not stop.is_set():
                began = time.monotonic()
                store.insert_job(NewJob("noop", {}))
                latencies.append(time.monotonic() - began)

        threads = [threading.Thread(target=enqueue) for _ in range(THREADS)]
        for t in threads:
            t.start()
        with psycopg.connect(url) as holder:
            holder.execute("SELECT count(*) FROM background_jobs")  # idle in transaction
            first = len(latencies)
            release = threading.Timer(hold, holder.rollback)
            release.start()
            began = time.monotonic()
            with psycopg.connect(url) as conn:
                migrate.apply(conn, folder / "m", locks=policy)
            took = time.monotonic() - began
            release.join()
        stop.set()
        for t in threads:
            t.join()
        pool.close()
        during = latencies[first:]
        return {"migrate_s": round(took, 2), "enqueues_during": len(during),
                "max_enqueue_s": round(max(during), 2),
                "p50_enqueue_ms": round(statistics.median(during) * 1000, 1)}
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run(url: str, runs: int = 3, quick: bool = False) -> dict[str, Any]:
    """Median figures over ``runs``: the long transaction lasts 10 s (5 s with ``quick``)."""
    server = make_conninfo(url, dbname="postgres")
    hold = 5.0 if quick else 10.0
    out: dict[str, Any] = {"long_transaction_s": hold, "threads": THREADS}
    for label, policy in [("lock_timeout_3s", migrate.LockPolicy(3.0, 10)),
                          ("no_lock_timeout", migrate.LockPolicy(3600.0, 1))]:
        results = [_once(server, policy, hold) for _ in range(runs)]
        out[label] = {key: statistics.median(r[key] for r in results) for key in results[0]}
        out[label]["runs"] = results
    return out
