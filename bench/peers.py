"""bgjobs side by side with pgqueuer, same database server, same workloads, same run.

Workloads (each a median over ``runs``, the two queues interleaved so a noisy moment hits
both): single enqueue (one job per transaction, the public path of each), batch enqueue
(10,000 jobs in one call), no-op drain with W = 1, 2, 4 worker processes, and pickup latency
(one job every 20 ms into idle workers, enqueue return -> handler start, wall clock).

pgqueuer runs with asyncpg (its fastest driver) and batch_size 10, its default; its consumers
are ``W`` processes of bench/pgq_consumer.py. bgjobs runs ``bgjobs worker --concurrency W``.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

from bench.common import as_url, percentile, quick_sizes
from tests.procs import BGJOBS, ROOT

PGQ_BATCH = 10


def versions() -> dict[str, str]:
    from importlib.metadata import version

    out = {}
    for name in ("bgjobs", "pgqueuer", "asyncpg", "psycopg"):
        try:
            out[name] = version(name)
        except Exception:  # noqa: BLE001 - a missing peer is reported, not fatal
            out[name] = "not installed"
    return out


def install_pgqueuer(url: str) -> None:
    async def go() -> None:
        import asyncpg
        from pgqueuer import AsyncpgDriver, Queries

        conn = await asyncpg.connect(as_url(url))
        try:
            await Queries(AsyncpgDriver(conn)).install()
        finally:
            await conn.close()

    asyncio.run(go())


def _truncate(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("TRUNCATE background_jobs")
        c.execute("TRUNCATE pgqueuer, pgqueuer_log")


# Enqueue -----------------------------------------------------------------------------------


def enqueue_rates(url: str, runs: int, single: int, batch: int) -> dict[str, Any]:
    from pgqueuer.adapters.drivers.psycopg import SyncPsycopgDriver
    from pgqueuer.adapters.persistence.queries import SyncQueries

    import bgjobs

    bgjobs.configure(url)
    pgq_conn = psycopg.connect(url, autocommit=True)
    pgq = SyncQueries(SyncPsycopgDriver(pgq_conn))

    def bg_one(n: int) -> None:
        bgjobs.enqueue("noop", {"echo": n})

    def pgq_one(n: int) -> None:
        pgq.enqueue("noop", str(n).encode())

    def rate(one: Callable[[int], None], jobs: int) -> float:
        _truncate(url)
        start = time.perf_counter()
        for n in range(jobs):
            one(n)
        return jobs / (time.perf_counter() - start)

    def bg_many() -> float:
        _truncate(url)
        params = [{"echo": n} for n in range(batch)]
        start = time.perf_counter()
        bgjobs.enqueue_many("noop", params)
        return batch / (time.perf_counter() - start)

    def pgq_many() -> float:
        _truncate(url)
        payloads: list[bytes | None] = [str(n).encode() for n in range(batch)]
        start = time.perf_counter()
        pgq.enqueue(["noop"] * batch, payloads, [0] * batch)
        return batch / (time.perf_counter() - start)

    out: dict[str, list[float]] = {k: [] for k in ("bgjobs_single", "pgqueuer_single",
                                                   "bgjobs_batch", "pgqueuer_batch")}
    try:
        rate(bg_one, 200), rate(pgq_one, 200)  # warm up: pools open, statements prepared
        for _ in range(runs):
            out["bgjobs_single"].append(rate(bg_one, single))
            out["pgqueuer_single"].append(rate(pgq_one, single))
            out["bgjobs_batch"].append(bg_many())
            out["pgqueuer_batch"].append(pgq_many())
    finally:
        pgq_conn.close()
    return {"single_jobs": single, "batch_jobs": batch, **_medians(out)}


# Drain and pickup latency ------------------------------------------------------------------


@contextmanager
def bgjobs_workers(url: str, w: int) -> Iterator[subprocess.Popen[Any]]:
    env = {**os.environ, "DATABASE_URL": url, "BGJOBS_TASK_MODULES": "bench.tasks",
           "PYTHONUNBUFFERED": "1"}
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen([BGJOBS, "worker", "--concurrency", str(w), "--log-level",
                                 "warning"], env=env, cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            proc.terminate()
            proc.wait(30)


@contextmanager
def pgq_workers(url: str, w: int, stamps: str) -> Iterator[list[subprocess.Popen[Any]]]:
    argv = [sys.executable, "-m", "bench.pgq_consumer", as_url(url), str(PGQ_BATCH), stamps]
    procs = [subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for _ in range(w)]
    try:
        time.sleep(1.5)  # imports and LISTEN
        yield procs
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)


def _wait_empty(c: psycopg.Connection, query: str, deadline: float) -> None:
    while c.execute(query).fetchone()[0]:  # type: ignore[index]
        if time.perf_counter() > deadline:
            raise RuntimeError(f"not drained in time: {query}")
        time.sleep(0.01)


BG_LEFT = "SELECT count(*) FROM background_jobs WHERE status <> 'complete'"
PGQ_LEFT = "SELECT count(*) FROM pgqueuer"


def _bg_drain(c: psycopg.Connection, jobs: int) -> float:
    c.execute("INSERT INTO background_jobs (job_type) SELECT 'noop' FROM generate_series(1, %s)",
              [jobs])
    c.execute("ANALYZE background_jobs")  # as a steady queue has (and pgqueuer's below)
    start = time.perf_counter()
    _wait_empty(c, BG_LEFT, start + max(60, jobs / 300))
    took = time.perf_counter() - start
    c.execute("TRUNCATE background_jobs")
    return jobs / took


def _pgq_drain(c: psycopg.Connection, jobs: int) -> float:
    c.execute("INSERT INTO pgqueuer (priority, entrypoint, payload, status) "
              "SELECT 0, 'noop', NULL, 'queued' FROM generate_series(1, %s)", [jobs])
    c.execute("ANALYZE pgqueuer")
    start = time.perf_counter()
    _wait_empty(c, PGQ_LEFT, start + max(60, jobs / 300))
    took = time.perf_counter() - start
    c.execute("TRUNCATE pgqueuer, pgqueuer_log")
    return jobs / took


def _stamps(path: Path, sent: dict[int, float], timeout: float = 20) -> list[float]:
    deadline = time.perf_counter() + timeout
    seen: dict[int, float] = {}
    while len(seen) < len(sent) and time.perf_counter() < deadline:
        time.sleep(0.05)
        if path.exists():
            for line in path.read_text().splitlines():
                at, n = line.split()
                seen[int(n)] = float(at)
    return [(seen[n] - t) * 1000 for n, t in sent.items() if n in seen]


def pickup(enqueue_one: Callable[[int], None], path: Path, jobs: int) -> list[float]:
    """Latency of jobs enqueued every 20 ms into idle workers, in ms."""
    path.unlink(missing_ok=True)
    sent: dict[int, float] = {}
    for n in range(jobs):
        enqueue_one(n)
        sent[n] = time.time()
        time.sleep(0.02)
    return _stamps(path, sent)


def drain_and_pickup(url: str, runs: int, jobs: int, ws: tuple[int, ...],
                     pickups: int) -> dict[str, Any]:
    from pgqueuer.adapters.drivers.psycopg import SyncPsycopgDriver
    from pgqueuer.adapters.persistence.queries import SyncQueries

    import bench.tasks  # noqa: F401 - registers bench_stamp for bgjobs.enqueue
    import bgjobs

    bgjobs.configure(url)
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp, psycopg.connect(url, autocommit=True) as c:
        stamps = Path(tmp) / "stamps"
        pgq = SyncQueries(SyncPsycopgDriver(c))
        for w in ws:
            rates: dict[str, list[float]] = {f"bgjobs_drain_w{w}": [], f"pgqueuer_drain_w{w}": []}
            with bgjobs_workers(url, w):
                _bg_drain(c, 500)
                for _ in range(runs):
                    rates[f"bgjobs_drain_w{w}"].append(_bg_drain(c, jobs))
                if w == ws[0]:
                    lat = pickup(lambda n: bgjobs.enqueue(
                        "bench_stamp", {"file": str(stamps), "n": n}), stamps, pickups)
                    out["bgjobs_pickup_ms"] = _latency(lat)
            with pgq_workers(url, w, str(stamps)):
                _pgq_drain(c, 500)
                for _ in range(runs):
                    rates[f"pgqueuer_drain_w{w}"].append(_pgq_drain(c, jobs))
                if w == ws[0]:
                    lat = pickup(lambda n: pgq.enqueue("stamp", str(n).encode()), stamps,
                                 pickups)
                    out["pgqueuer_pickup_ms"] = _latency(lat)
            out.update(_medians(rates))
    out["drain_jobs"] = jobs
    return out


def _latency(values: list[float]) -> dict[str, Any]:
    return {"n": len(values), "p50": round(percentile(values, 50), 2),
            "p99": round(percentile(values, 99), 2)}


def _medians(runs: dict[str, list[float]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, values in runs.items():
        out[f"{name}_per_s"] = round(statistics.median(values))
        out[f"{name}_runs"] = [round(v) for v in values]
    return out


def run(url: str, runs: int = 3, quick: bool = False) -> dict[str, Any]:
    install_pgqueuer(url)
    single, batch, drain, pickups = quick_sizes(quick, (2000, 10_000, 20_000, 100),
                                                (300, 2000, 3000, 30))
    report: dict[str, Any] = {"versions": versions(), "pgqueuer_batch_size": PGQ_BATCH}
    report["enqueue"] = enqueue_rates(url, runs, single, batch)
    report["drain"] = drain_and_pickup(url, runs, drain, (1, 2, 4), pickups)
    _truncate(url)
    return report
