"""IO-bound jobs (issue 18): N jobs that each await 100 ms, bgjobs beside pgqueuer and
procrastinate, one process each, the same number of jobs in flight (bench/io_tasks.py's
CONCURRENCY). Two variants: ``sleep`` (``await asyncio.sleep(0.1)``) and ``http`` (a GET to a
local server that answers after 100 ms, bench/io_http.py, started in its own process; every
queue's handler calls it with the same aiohttp client).

bgjobs: ``bgjobs worker --concurrency 1`` with the async types ``bench_io_sleep`` and
``bench_io_http``, which run in its IO process; every job reports progress before and after its
wait (neither peer has a progress API). pgqueuer: one process of bench/pgq_io_consumer.py,
asyncpg, ``max_concurrent_tasks`` = CONCURRENCY and ``batch_size`` = CONCURRENCY / 5 (it must be
at most half of it; a fifth refills sooner). procrastinate: one worker process
(bench/procrastinate_io_worker.py, psycopg, LISTEN/NOTIFY) with ``concurrency`` = CONCURRENCY;
it fetches one job per statement. Each figure is the median time from the commit of one INSERT
of all N jobs until none is left, the queues up side by side and interleaved run by run (and
variant by variant), after one warm-up run each; the ratios are also given run by run. The
floor is N x 0.1 s / CONCURRENCY.

Then, bgjobs alone: 10,000 jobs (``bench_io_hold``, concurrency 10,000) awaiting 3 s, all in
flight at once in the IO process: its memory per waiting job (resident size at the peak less
idle), and the database's committed transactions per job (pg_stat_database, read after an 11 s
pause, since idle backends report their counts that late; the bench's own reads subtracted).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from importlib.metadata import version
from pathlib import Path
from typing import Any

import psycopg

from bench.common import as_url, quick_sizes
from bench.io_http import URL_ENV
from bench.io_tasks import CONCURRENCY
from bench.peers import install_pgqueuer, versions
from tests.procs import BGJOBS, ROOT, free_port

PGQ_BATCH = CONCURRENCY // 5
BG_LEFT = "SELECT count(*) FROM background_jobs WHERE status <> 'complete'"
PGQ_LEFT = "SELECT count(*) FROM pgqueuer"
PRO_LEFT = "SELECT count(*) FROM procrastinate_jobs WHERE status <> 'succeeded'"


@contextmanager
def _process(argv: list[str], env: dict[str, str] | None = None) -> Iterator[None]:
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        time.sleep(3.0)  # imports, LISTEN, the IO process ready (the first run warms up)
        yield
    finally:
        proc.terminate()
        proc.wait(30)


def _drain(c: psycopg.Connection, insert: str, left: str, jobs: int, kind: str) -> float:
    c.execute(insert, [kind, jobs])
    start = time.perf_counter()
    deadline = start + max(60.0, jobs / 20)
    while c.execute(left).fetchone()[0]:  # type: ignore[index]
        if time.perf_counter() > deadline:
            raise RuntimeError(f"not drained in time: {left}")
        time.sleep(0.005)
    return time.perf_counter() - start


def _rss(pid: int) -> int:
    """Resident bytes of a process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _commits(c: psycopg.Connection) -> int:
    return int(c.execute("SELECT xact_commit FROM pg_stat_database "
                         "WHERE datname = current_database()").fetchone()[0])  # type: ignore[index]


def in_flight(url: str, jobs: int) -> dict[str, Any]:
    """Memory and transactions per job with ``jobs`` awaiting at once in one IO process."""
    from tests.procs import children_of

    env = {**os.environ, "DATABASE_URL": url, "BGJOBS_TASK_MODULES": "bench.io_tasks",
           "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([BGJOBS, "worker", "--concurrency", "1", "--log-level", "warning"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        time.sleep(4.0)
        io = next(p for p in children_of(proc.pid)
                  if b"io_child" in Path(f"/proc/{p}/cmdline").read_bytes())
        idle = {"io_process": _rss(io), "supervisor": _rss(proc.pid)}
        with psycopg.connect(url, autocommit=True) as c:
            before, reads = _commits(c), 1
            c.execute("INSERT INTO background_jobs (job_type, params) SELECT 'bench_io_hold', "
                      "'{\"seconds\": 3.0}' FROM generate_series(1, %s)", [jobs])
            peak = dict(idle)
            most = 0
            start = time.perf_counter()
            while True:
                running, left = c.execute(
                    "SELECT count(*) FILTER (WHERE status = 'running'), "
                    "count(*) FILTER (WHERE status <> 'complete') FROM background_jobs"
                ).fetchone()  # type: ignore[misc]
                reads += 1
                most = max(most, running)
                peak = {"io_process": max(peak["io_process"], _rss(io)),
                        "supervisor": max(peak["supervisor"], _rss(proc.pid))}
                if not left or time.perf_counter() - start > 120:
                    break
                time.sleep(0.1)
            took = time.perf_counter() - start
            time.sleep(11.0)
            commits = _commits(c) - before - reads - 1  # less the INSERT and our own reads
            c.execute("TRUNCATE background_jobs")
    finally:
        proc.terminate()
        proc.wait(30)
    return {
        "jobs": jobs, "most_running_at_once": most, "seconds": round(took, 2),
        "rss_idle_mb": {k: round(v / 2**20, 1) for k, v in idle.items()},
        "rss_peak_mb": {k: round(v / 2**20, 1) for k, v in peak.items()},
        "kb_per_waiting_job": {k: round((peak[k] - idle[k]) / jobs / 1024, 1) for k in idle},
        "transactions_per_job": round(commits / jobs, 3),
    }


#: The variants: what each queue's job does. sleep: ``await asyncio.sleep(0.1)``; http: a GET
#: to bench/io_http.py's server, which answers after 100 ms (the same httpx client everywhere).
VARIANTS = {"sleep": ("bench_io_sleep", "io_sleep"), "http": ("bench_io_http", "io_http")}


def _one_run(c: psycopg.Connection, bg_type: str, peer_task: str, jobs: int,
             peers: bool) -> tuple[dict[str, float], int]:
    """Each queue drains ``jobs`` once, in turn: the times, and bgjobs's jobs whose final
    progress is not stored."""
    took = {"bgjobs": _drain(c, "INSERT INTO background_jobs (job_type) SELECT %s "
                             "FROM generate_series(1, %s)", BG_LEFT, jobs, bg_type)}
    missing = c.execute("SELECT count(*) FROM background_jobs WHERE progress->>'stage' IS "
                        "DISTINCT FROM 'done'").fetchone()[0]  # type: ignore[index]
    c.execute("TRUNCATE background_jobs")
    took["pgqueuer"] = _drain(c, "INSERT INTO pgqueuer (priority, entrypoint, payload, status) "
                              "SELECT 0, %s, NULL, 'queued' FROM generate_series(1, %s)",
                              PGQ_LEFT, jobs, peer_task)
    c.execute("TRUNCATE pgqueuer, pgqueuer_log")
    if peers:
        took["procrastinate"] = _drain(c, "INSERT INTO procrastinate_jobs (queue_name, "
                                       "task_name, args) SELECT 'default', %s, '{}' FROM "
                                       "generate_series(1, %s)", PRO_LEFT, jobs, peer_task)
        c.execute("TRUNCATE procrastinate_jobs CASCADE")
    return took, missing


def _summary(jobs: int, times: dict[str, list[float]], missing: int) -> dict[str, Any]:
    warm_up = {k: round(v.pop(0), 3) for k, v in times.items()}
    med = {k: statistics.median(v) for k, v in times.items()}
    out: dict[str, Any] = {"floor_s": round(jobs * 0.1 / CONCURRENCY, 3)}
    for name, m in med.items():
        out[f"{name}_s"] = round(m, 3)
        out[f"{name}_jobs_per_s"] = round(jobs / m)
        if name != "bgjobs":
            out[f"bgjobs_vs_{name}"] = round(m / med["bgjobs"], 2)
            out[f"bgjobs_vs_{name}_per_run"] = [
                round(p / b, 2) for p, b in zip(times[name], times["bgjobs"], strict=True)]
    out["bgjobs_jobs_without_final_progress"] = missing
    out["runs_s"] = {k: [round(v, 3) for v in vs] for k, vs in times.items()}
    out["warm_up_s"] = warm_up
    return out


def run(url: str, runs: int = 3, quick: bool = False, variants: tuple[str, ...] = ("sleep", "http"),
        procrastinate: bool = True, hold: bool = True) -> dict[str, Any]:
    install_pgqueuer(url)
    (jobs,) = quick_sizes(quick, (2000,), (500,))
    port = free_port()
    env = {**os.environ, "DATABASE_URL": url, "BGJOBS_TASK_MODULES": "bench.io_tasks",
           "PYTHONUNBUFFERED": "1", URL_ENV: f"http://127.0.0.1:{port}/answer"}
    bg_argv = [BGJOBS, "worker", "--concurrency", "1", "--log-level", "warning"]
    pgq_argv = [sys.executable, "-m", "bench.pgq_io_consumer", as_url(url), str(PGQ_BATCH),
                str(CONCURRENCY)]
    pro_argv = [sys.executable, "-m", "bench.procrastinate_io_worker", url, str(CONCURRENCY)]
    subprocess.run([sys.executable, "-m", "bench.procrastinate_io_worker", "--schema", url],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    times = {v: {"bgjobs": [], "pgqueuer": [], **({"procrastinate": []} if procrastinate
                                                    else {})} for v in variants}
    missing = dict.fromkeys(variants, 0)
    load = [os.getloadavg()[0]]
    # All stay up (idle, each on its own table) so that runs interleave after one warm-up.
    with psycopg.connect(url, autocommit=True) as c, \
            _process([sys.executable, "-m", "bench.io_http", str(port)], env), \
            _process(bg_argv, env), _process(pgq_argv, env), \
            (_process(pro_argv, env) if procrastinate else nullcontext()):
        for _ in range(runs + 1):
            for variant in variants:
                took, lost = _one_run(c, *VARIANTS[variant], jobs, procrastinate)
                for name, t in took.items():
                    times[variant][name].append(t)
                missing[variant] += lost
            load.append(os.getloadavg()[0])
    out: dict[str, Any] = {
        "versions": versions(), "jobs": jobs, "await_s": 0.1, "concurrency": CONCURRENCY,
        "pgqueuer_batch_size": PGQ_BATCH, "load_average_1m": [round(x, 1) for x in load],
        "aiohttp": version("aiohttp"),
    }
    for variant in variants:
        out[variant] = _summary(jobs, times[variant], missing[variant])
    if hold:
        out["in_flight"] = in_flight(url, 2000 if quick else 10_000)
    return out
