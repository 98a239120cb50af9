"""Progress capacity and the cost of NOTIFY to unrelated work on the same Postgres.

K running jobs each report progress once a second through the workers' own write path: S
simulated supervisors (processes), each holding K/S claimed jobs and writing their progress
with the supervisor's Outbox and Writer (one fenced UPDATE ... FROM unnest(...) per tick, on a
connection that carries bgjobs.worker_id), while pgbench's built-in TPC-B-like workload runs
on another database of the same server. The handlers are simulated (the write path is not).

Reported per K: pgbench tps with the progress traffic as a share of pgbench alone (measured
just before, same run), progress commits per second (they grow with S, not with K), the
median time to write one supervisor's tick, and the notifications per second it caused. With
``events_clients``, one events process with that many streams on one of the jobs runs too,
and its commit -> client delay is reported (bench/events_load.py).
"""

from __future__ import annotations

import multiprocessing
import re
import select
import statistics
import subprocess
import threading
import time
import uuid
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from bgjobs.core import embedded
from bgjobs.core.config import load

PGBENCH_CLIENTS = 4


def _supervisor(url: str, worker_id: str, jobs: int, seconds: float, ready: Any, go: Any,
                out: Any) -> None:
    """One simulated supervisor: claim ``jobs`` jobs, then write their progress every second."""
    from typing import cast

    from bgjobs.core.jobs import Attempt
    from bgjobs.core.store import Store
    from bgjobs.worker.connection import OneConnection
    from bgjobs.worker.outbox import Outbox, Running
    from bgjobs.worker.writer import Writer

    store = Store(cast(Any, OneConnection(url)))
    claimed = []
    while len(claimed) < jobs:
        claimed += store.claim_specs(worker_id, ["bench_report"], limit=jobs - len(claimed),
                                     lease_seconds=3600)
    running = [Running(Attempt(c.id, worker_id, c.attempt), c.job_type,
                       c.max_attempts, c.version, cast(Any, None), 0.0) for c in claimed]
    writer = Writer(url)
    outbox = Outbox()
    ready.put(1)
    go.wait()
    ticks, lost = [], 0
    start = time.monotonic()
    for tick in range(1, int(seconds) + 1):
        for r in running:
            outbox.report(r, {"current": tick, "total": int(seconds), "stage": "working"})
        began = time.perf_counter()
        writer.submit(outbox.take())
        select.select([writer.wake_r], [], [], 120)
        for _batch, gone, error in writer.results():
            lost += len(gone)
            if error is not None:
                raise error
        ticks.append(time.perf_counter() - began)
        time.sleep(max(0.0, start + tick - time.monotonic()))
    writer.close()
    out.put({"ticks": ticks, "lost": lost})


def _pgbench_bin() -> str:
    return str(embedded.bin_dir(load().pg_bin) / "pgbench")


def _pgbench(server: str, db: str, seconds: float) -> float:
    args = conninfo_to_dict(server)
    cmd = [_pgbench_bin(), "-n", "-c", str(PGBENCH_CLIENTS), "-j", "2", "-T",
           str(int(seconds)), "-h", str(args.get("host", "127.0.0.1")), "-p",
           str(args.get("port", 5432)), "-U", str(args.get("user", "postgres")), db]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    match = re.search(r"tps = ([0-9.]+)", done.stdout)
    if not match:
        raise RuntimeError(f"pgbench said: {done.stdout[-500:]} {done.stderr[-500:]}")
    return float(match.group(1))


def _notifications_per_s(url: str, seconds: float, stop: threading.Event) -> float:
    """What one LISTEN connection on background_jobs_progress receives (the events service's)."""
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("LISTEN background_jobs_progress")
        count, start = 0, time.monotonic()
        while not stop.is_set() and time.monotonic() - start < seconds + 5:
            for _ in c.notifies(timeout=0.5):
                count += 1
        return count / max(0.001, time.monotonic() - start)


def run_once(url: str, k: int, supervisors: int, seconds: float,
             events_clients: int = 0) -> dict[str, Any]:
    server = make_conninfo(url, dbname="postgres")
    pgdb = f"bgjobs_bench_pgbench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{pgdb}"')
    try:
        args = conninfo_to_dict(server)
        subprocess.run([_pgbench_bin(), "-i", "-q", "-s", "4", "-h",
                        str(args.get("host", "127.0.0.1")), "-p", str(args.get("port", 5432)),
                        "-U", str(args.get("user", "postgres")), pgdb],
                       capture_output=True, check=True)
        alone = _pgbench(server, pgdb, seconds)
        with psycopg.connect(url, autocommit=True) as c:
            c.execute("TRUNCATE background_jobs")
            c.execute("INSERT INTO background_jobs (job_type, params) "
                      "SELECT 'bench_report', '{}' FROM generate_series(1, %s)", [k])
        ctx = multiprocessing.get_context("spawn")
        ready, go, out = ctx.Queue(), ctx.Event(), ctx.Queue()
        share = [k // supervisors + (1 if i < k % supervisors else 0) for i in range(supervisors)]
        procs = [ctx.Process(target=_supervisor, args=(url, f"bench-sup-{i}", share[i],
                                                       seconds, ready, go, out))
                 for i in range(supervisors)]
        for p in procs:
            p.start()
        for _ in procs:
            ready.get(timeout=120)
        stop = threading.Event()
        rates: list[float] = []
        listener = threading.Thread(target=lambda: rates.append(
            _notifications_per_s(url, seconds, stop)))
        listener.start()
        events: dict[str, Any] = {}
        if events_clients:
            from bench import events_load

            thread = threading.Thread(target=lambda: events.update(events_load.run_once(
                url, events_clients, updates=int(seconds * 10) - 20)))
        go.set()
        if events_clients:
            thread.start()
        loaded = _pgbench(server, pgdb, seconds)
        results = [out.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(30)
        stop.set()
        listener.join()
        if events_clients:
            thread.join()
    finally:
        with psycopg.connect(server, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{pgdb}" WITH (FORCE)')
    ticks = [t for r in results for t in r["ticks"]]
    report = {
        "k": k, "supervisors": supervisors, "seconds": seconds,
        "pgbench_alone_tps": round(alone), "pgbench_loaded_tps": round(loaded),
        "pgbench_kept": round(loaded / alone, 3),
        "progress_commits_per_s": round(len(ticks) / seconds, 1),
        "progress_rows_per_s": round(k * len(ticks) / supervisors / seconds),
        "tick_write_ms_median": round(statistics.median(ticks) * 1000, 1),
        "notifications_per_s": round(rates[0]) if rates else None,
        "lost": sum(r["lost"] for r in results),
    }
    if events:
        report["events"] = {key: events[key] for key in (
            "clients", "delay_p50_ms", "delay_p99_ms", "final_p99_ms", "rss_mb")}
    return report


def run(url: str, runs: int = 3, quick: bool = False) -> dict[str, Any]:
    import bench.tasks  # noqa: F401 - the bench_report type for the simulated jobs

    ks, seconds = ((100, 1000), 8.0) if quick else ((100, 1000, 5000), 15.0)
    out: dict[str, Any] = {"pgbench_clients": PGBENCH_CLIENTS}
    for k in ks:
        rows = [run_once(url, k, 2, seconds) for _ in range(runs)]
        out[f"k{k}"] = _median_row(rows)
    # Commits grow with supervisors, not with K: the same K with 4 supervisors.
    out["k1000_s4"] = _median_row([run_once(url, 1000, 4, seconds) for _ in range(runs)])
    if not quick:
        out["k1000_with_1000_streams"] = run_once(url, 1000, 2, seconds, events_clients=1000)
    return out


def _median_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in rows[0].items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[key] = round(statistics.median(r[key] for r in rows), 3)
        else:
            out[key] = value
    out["runs_pgbench_kept"] = [r["pgbench_kept"] for r in rows]
    return out
