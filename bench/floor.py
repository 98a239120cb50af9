"""The floor of a fan-out on this machine: what the kernel's loopback send costs, per socket.

One event loop (uvloop when installed, as in `bgjobs events`) writes a ~900-byte event to N
connected loopback sockets, ``transport.write`` to each in a plain loop, while another process
reads and discards them; ROUNDS rounds, ``GAP`` seconds apart (the events bench's ten states a
second), median. Nothing of bgjobs runs: it is the cost any server pays to hand one event to
N sockets, and the events section reports its CPU per stream-event as a ratio to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import socket
import statistics
import time
from typing import Any

ROUNDS = 50
GAP = 0.1
EVENT_BYTES = 900


def event(size: int = EVENT_BYTES) -> bytes:
    """An SSE event of about ``size`` bytes in one HTTP chunk, as a stream sends it."""
    body = b'{"progress":{"pad":"' + b"x" * max(0, size - 60) + b'"}}'
    sse = b"id: 101\r\ndata: " + body + b"\r\n\r\n"
    return f"{len(sse):x}\r\n".encode() + sse + b"\r\n"


def _loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()  # type: ignore[no-any-return]


class _Sink(asyncio.Protocol):
    def data_received(self, data: bytes) -> None:
        pass


def _reader(port: int, count: int, ready: Any, stop: Any) -> None:
    """Connect ``count`` sockets and discard whatever arrives, until told to stop."""
    async def main() -> None:
        loop = asyncio.get_running_loop()
        sem = asyncio.Semaphore(200)

        async def connect() -> asyncio.BaseTransport:
            async with sem:
                transport, _ = await loop.create_connection(_Sink, "127.0.0.1", port)
                return transport

        transports = await asyncio.gather(*(connect() for _ in range(count)))
        ready.set()
        await loop.run_in_executor(None, stop.wait)
        for t in transports:
            t.close()

    loop = _loop()
    loop.run_until_complete(main())
    loop.close()


def measure(count: int, rounds: int = ROUNDS, size: int = EVENT_BYTES) -> dict[str, Any]:
    """Median wall and CPU time of one round of writes to ``count`` sockets, and per socket."""
    data = event(size)
    transports: list[asyncio.Transport] = []

    class Accept(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            transports.append(transport)  # type: ignore[arg-type]

    async def main() -> tuple[list[float], list[float]]:
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        server = await loop.create_server(Accept, sock=sock, backlog=1024)
        ctx = multiprocessing.get_context("spawn")
        ready, stop = ctx.Event(), ctx.Event()
        reader = ctx.Process(target=_reader, args=(sock.getsockname()[1], count, ready, stop))
        reader.start()
        try:
            await loop.run_in_executor(None, ready.wait, 120)
            deadline = time.monotonic() + 60
            while len(transports) < count and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            if len(transports) < count:
                raise RuntimeError(f"floor: {len(transports)} of {count} sockets connected")
            walls, cpus = [], []
            for _ in range(rounds):
                t0, c0 = time.perf_counter(), time.thread_time()
                for t in transports:
                    t.write(data)
                cpus.append(time.thread_time() - c0)
                walls.append(time.perf_counter() - t0)
                await asyncio.sleep(GAP)
            return walls, cpus
        finally:
            stop.set()
            reader.join(30)
            with contextlib.suppress(Exception):
                reader.kill()
            for t in transports:
                t.close()
            server.close()

    loop = _loop()
    try:
        walls, cpus = loop.run_until_complete(main())
    finally:
        loop.close()
    wall, cpu = statistics.median(walls), statistics.median(cpus)
    return {"sockets": count, "event_bytes": len(data), "rounds": rounds,
            "loop": type(loop).__module__.split(".")[0],
            "round_ms": round(wall * 1000, 2), "round_min_ms": round(min(walls) * 1000, 2),
            "round_cpu_ms": round(cpu * 1000, 2),
            "us_per_socket": round(wall * 1e6 / count, 2),
            "cpu_us_per_socket": round(cpu * 1e6 / count, 2)}


if __name__ == "__main__":
    import json
    import sys

    for n in [int(a) for a in sys.argv[1:]] or [1000, 5000]:
        print(json.dumps(measure(n)), flush=True)
