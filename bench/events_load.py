"""Live progress at scale: C SSE clients on one `bgjobs events` process watching one job.

The load generator must not bound what it measures, so the clients are split: C - S
connections read and discard (a raw asyncio Protocol, no parsing: a few microseconds per read),
and S sampled connections parse the stream and timestamp every event they receive. The
clients run in ``--procs`` processes of their own (default 2), apart from the events process.

A writer claims the job and reports ``updates`` progress states ``interval`` apart through the
workers' write path (Store.report_progress, fenced, one statement each), recording the wall
clock right after each commit returns; then it completes the job. The delay of an event is its
receive time minus the commit time of its version (an upper bound on the real commit time,
so delays are if anything understated by the commit round trip, well under a millisecond).

Reported: delay p50/p99 over every event the sampled clients received, of the final event
alone, how many of the C clients got the final state, the events process's RSS with all
streams open, and the LISTEN connections it held.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg

from bench import floor
from bench.common import percentile
from bgjobs.core.db import make_pool
from bgjobs.core.jobs import Attempt
from bgjobs.core.store import Store
from bgjobs.server.broadcast import APPLICATION_NAME
from tests.conftest import add_job, url_env
from tests.procs import BGJOBS, Proc, free_port, wait_until

FINAL = b'"status":"complete"'
METRICS_TOKEN = "bench-metrics"  # /events/stats answers only to it


class Discard(asyncio.Protocol):
    """Reads and throws away; notes only whether the final state went by."""

    def __init__(self, request: bytes, done: asyncio.Future[bool]) -> None:
        self.request, self.done, self.tail = request, done, b""
        self.answered: asyncio.Future[bool] = done.get_loop().create_future()  # a 200?

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if not self.answered.done():
            self.answered.set_result(data.startswith(b"HTTP/1.1 200"))
        if FINAL in self.tail + data and not self.done.done():
            self.done.set_result(True)
        self.tail = data[-64:]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answered.done():
            self.answered.set_result(False)
        if not self.done.done():
            self.done.set_result(False)


class Sample(Discard):
    """Parses the stream and timestamps every event (version -> wall clock)."""

    def __init__(self, request: bytes, done: asyncio.Future[bool]) -> None:
        super().__init__(request, done)
        self.buffer = b""
        self.seen: list[tuple[int, float]] = []

    def data_received(self, data: bytes) -> None:
        now = time.time()
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            block, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            for line in block.split(b"\r\n"):
                if line.startswith(b"id: "):
                    self.seen.append((int(line[4:]), now))
        super().data_received(data)


def _client_proc(port: int, path: str, token: str, count: int, samples: int,
                 ready: Any, go: Any, out: Any) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        request = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n"
                   f"Authorization: Bearer {token}\r\n\r\n").encode()
        dones: list[asyncio.Future[bool]] = []
        sampled: list[Sample] = []
        sem = asyncio.Semaphore(200)

        async def connect(n: int) -> None:
            async with sem:
                for _ in range(10):
                    done: asyncio.Future[bool] = loop.create_future()
                    proto = Sample(request, done) if n < samples else Discard(request, done)
                    transport, _p = await loop.create_connection(lambda p=proto: p, "127.0.0.1",
                                                                 port)
                    if await proto.answered:
                        break
                    # Refused (a 503 when the machine is too busy to authenticate 400
                    # streams at once): try again, as a browser's EventSource would.
                    transport.close()
                    await asyncio.sleep(1)
            dones.append(done)
            if isinstance(proto, Sample):
                sampled.append(proto)

        await asyncio.gather(*(connect(n) for n in range(count)))
        ready.put(count)
        await loop.run_in_executor(None, go.wait)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*dones), timeout=120)
        out.put({"final": sum(1 for d in dones if d.done() and d.result()),
                 "events": [ev for s in sampled for ev in s.seen]})

    asyncio.run(main())


def run_once(url: str, clients: int, samples: int = 50, updates: int = 100,
             interval: float = 0.1, procs: int = 2) -> dict[str, Any]:
    pool = make_pool(url, min_size=1, max_size=2, open_wait=True)
    store = Store(pool)
    user, token = store.create_user(f"load{int(time.time() * 1000) % 10**9}")
    job = add_job(store, "noop", user_id=user.id)
    port = free_port()
    env = {**url_env(url), "BGJOBS_EVENTS_BIND": f"127.0.0.1:{port}",
           "BGJOBS_SECRET_KEY": "bench", "BGJOBS_EVENTS_CONNECTIONS": str(clients + 100),
           "BGJOBS_ACCESS_LOG": "/dev/null", "BGJOBS_LOG_LEVEL": "WARNING",
           "BGJOBS_METRICS_TOKEN": METRICS_TOKEN}
    metrics = {"Authorization": f"Bearer {METRICS_TOKEN}"}
    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        service = Proc([BGJOBS, "events"], env, Path(tmp) / "events.log")
        base = f"http://127.0.0.1:{port}"
        try:
            wait_until(lambda: httpx.get(f"{base}/events/healthz", timeout=2).status_code
                       == 200, 60, "events service up", service)
            pid = httpx.get(f"{base}/events/stats", headers=metrics, timeout=5).json()["pid"]
            ready, go, out = ctx.Queue(), ctx.Event(), ctx.Queue()
            share = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
            sample_share = [samples // procs + (1 if i < samples % procs else 0)
                            for i in range(procs)]
            workers = [ctx.Process(target=_client_proc, args=(
                port, f"/events/jobs/{job.id}", token, share[i], sample_share[i], ready, go,
                out)) for i in range(procs)]
            for w in workers:
                w.start()
            for _ in workers:
                ready.get(timeout=300)
            wait_until(lambda: httpx.get(f"{base}/events/stats", headers=metrics, timeout=10)
                       .json()["subscriptions"] >= clients, 120, f"{clients} streams", service)
            rss_mb = _rss_mb(pid)
            with psycopg.connect(url, autocommit=True) as c:
                listens = c.execute("SELECT count(*) FROM pg_stat_activity WHERE "
                                    "application_name = %s AND datname = current_database()",
                                    [APPLICATION_NAME]).fetchone()[0]  # type: ignore[index]
            profiler = _profile(pid, updates * interval)
            cpu_before = _cpu_seconds(pid)
            go.set()
            committed = _write(store, job.id, updates, interval)
            if profiler is not None:
                profiler.wait(60)
            results = [out.get(timeout=180) for _ in workers]
            cpu = _cpu_seconds(pid) - cpu_before
            after = httpx.get(f"{base}/events/stats", headers=metrics, timeout=10).json()
            for w in workers:
                w.join(30)
        finally:
            service.stop()
            pool.close()
    delays = [(at - committed[v]) * 1000 for r in results for v, at in r["events"]
              if v in committed]
    last = max(committed)
    finals = [(at - committed[v]) * 1000 for r in results for v, at in r["events"] if v == last]
    return {
        "clients": clients, "sampled": samples, "updates": updates + 1,
        "interval_ms": interval * 1000,
        "delay_p50_ms": round(percentile(delays, 50), 1),
        "delay_p99_ms": round(percentile(delays, 99), 1),
        "final_p50_ms": round(percentile(finals, 50), 1),
        "final_p99_ms": round(percentile(finals, 99), 1),
        "events_per_sampled_client": round(len(delays) / max(1, samples), 1),
        "clients_with_final_state": sum(r["final"] for r in results),
        "rss_mb": round(rss_mb, 1),
        # The events process's CPU time while the job ran, per state it had to send.
        "events_cpu_s": round(cpu, 2),
        "cpu_us_per_stream_event": round(cpu * 1e6 / max(1, clients * len(delays)
                                                         / max(1, samples)), 1),
        "listen_connections": listens,
        # Stream writes past ASGI `send` (server/fanout.py), and streams handed back to their
        # task because their socket was backed up.
        "fanout_writes": after.get("fanout_writes", 0),
        "fanout_handed_back": after.get("fanout_handed_back", 0),
        "fanout_cpu_us_per_write": round(after.get("fanout_cpu_s", 0) * 1e6
                                         / max(1, after.get("fanout_writes", 0)), 1),
    }


def _write(store: Store, job_id: Any, updates: int, interval: float) -> dict[int, float]:
    """Claim, report progress, complete; {version: wall clock right after its commit}."""
    committed: dict[int, float] = {}
    [claimed] = store.claim_specs("bench-writer", ["noop"])
    attempt = Attempt(job_id, "bench-writer", claimed.attempt)
    version = claimed.version
    next_at = time.perf_counter()
    for n in range(1, updates + 1):
        store.report_progress([(attempt, {"current": n, "total": updates, "stage": "bench"})])
        version += 1
        committed[version] = time.time()
        next_at += interval
        time.sleep(max(0.0, next_at - time.perf_counter()))
    store.complete([(attempt, {"ok": True}, None)])
    committed[version + 1] = time.time()
    return committed


def _profile(pid: int, seconds: float) -> subprocess.Popen[bytes] | None:
    """With BENCH_PROFILE=FILE, py-spy samples the events process while the job runs."""
    out = os.environ.get("BENCH_PROFILE")
    if not out:
        return None
    return subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "-p",
                             str(pid), "-d", str(max(1, int(seconds))), "-r", "250", "-f", "raw",
                             "-o", out], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run(url: str, runs: int = 3, quick: bool = False) -> dict[str, Any]:
    """Each size: ``runs`` runs of the load, each right after a measure of the floor
    (bench/floor.py) with as many sockets, so that a noisy moment hits both; medians."""
    sizes = (200,) if quick else (1000, 5000)
    out: dict[str, Any] = {}
    for clients in sizes:
        rows = []
        for _ in range(runs):
            base = floor.measure(clients)
            row = run_once(url, clients)
            row["floor_cpu_us_per_socket"] = base["cpu_us_per_socket"]
            row["floor_us_per_socket"] = base["us_per_socket"]
            # The events process's CPU per stream-event against the bare send's: 1.0 would
            # be a fan-out that costs nothing but the kernel's send.
            row["ratio_to_floor"] = round(row["cpu_us_per_stream_event"]
                                          / max(0.01, base["cpu_us_per_socket"]), 2)
            row["floor"] = base
            rows.append(row)
        out[f"c{clients}"] = {**{k: (round(_median([r[k] for r in rows]), 2)
                                     if isinstance(rows[0][k], float) else rows[0][k])
                                 for k in rows[0] if k != "floor"},
                              "runs": rows}
    return out


def _median(values: list[float]) -> float:
    import statistics

    return statistics.median(values)


if __name__ == "__main__":
    from bench.common import bench_database

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    with bench_database(os.environ.get("DATABASE_URL")) as db:
        print(json.dumps(run_once(db, n), indent=2))
