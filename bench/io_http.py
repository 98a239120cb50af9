"""The io section's HTTP variant (bench/io_jobs.py): a local server that answers every request
after 100 ms, and the one client every queue's handler uses to call it.

``python -m bench.io_http PORT`` serves until killed (its own process, so that its event loop
competes with neither the bench's polling nor the workers). The server is an asyncio Protocol
that speaks just enough HTTP/1.1 (keep-alive, no request body) for one GET per job. The client
is aiohttp's (in the ``bench`` extra): one ``ClientSession`` per process and event loop, its
connection pool as large as the jobs in flight, so that no queue waits for a connection. Not
httpx, though bgjobs depends on it: httpx 0.29's pool costs about 2 ms of CPU per request with
100 in flight and grows with them (100 concurrent GETs of this server took 0.30 s, 500 took 6-14
s; aiohttp: 0.16 s for 500), so it measured the client instead of the queues.
"""

from __future__ import annotations

import asyncio
import os
import sys

import aiohttp

from bench.io_tasks import CONCURRENCY

#: How long the server takes to answer, seconds (a partner API).
ANSWER_AFTER = 0.1
#: The environment variable that tells every queue's handler where the server is.
URL_ENV = "BENCH_IO_HTTP_URL"

_RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n"
             b"Connection: keep-alive\r\n\r\n{\"ok\":true}")


class _Answer(asyncio.Protocol):
    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        loop = asyncio.get_running_loop()
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:  # one request (GET, no body)
            self.buffer = self.buffer[end + 4:]
            loop.call_later(ANSWER_AFTER, self.answer)

    def answer(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_RESPONSE)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def serve(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(
        _Answer, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


_sessions: dict[asyncio.AbstractEventLoop, aiohttp.ClientSession] = {}


async def call() -> int:
    """GET the server (URL_ENV) with this process's client; the response's status code."""
    loop = asyncio.get_running_loop()
    session = _sessions.get(loop)
    if session is None:
        session = _sessions[loop] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=CONCURRENCY),
            timeout=aiohttp.ClientTimeout(total=30.0), raise_for_status=True)
    async with session.get(os.environ[URL_ENV]) as response:
        await response.read()
        return response.status


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
