"""The events service's hot loop: each round of news written straight to the streams' sockets.

A stream is a plain Starlette response: the connection cap, authentication, Last-Event-ID, its
first event, its pings when it is behind, and its end all go through ASGI ``send``. But a
state sent to a thousand streams through ``send`` costs a task switch per stream and the
middleware's wrappers around every chunk, four times what the kernel's send costs
(docs/benchmarks.md). So once a stream's headers and first event are out, and when the server
lends the app the connection's transport (``EXTENSION``: gunicorn's asgi worker does, see
server/gunicorn_conf.py), its news skips all that. A subscription with news calls ``ready``;
the notifications at hand are all applied first (``call_soon``), then one batch writes each
ready stream's waiting states straight to its transport, as HTTP/1.1 chunks framed once per
state for every stream. No task switches, and a burst of notifications still costs one write
per stream.

A stream whose socket is backed up (more than ``HIGH_WATER`` bytes waiting, the server's own
limit) is handed back to its task, which sends its latest state through ``send`` once the
socket drains; meanwhile its mailbox keeps the latest state per job, never a backlog.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from bgjobs.core.jobs import FINISHED

if TYPE_CHECKING:
    from bgjobs.server.broadcast import State, Subscription

#: The ASGI scope extension holding the transport of an HTTP/1.1 request's connection.
EXTENSION = "bgjobs.transport"
#: Bytes waiting in a stream's transport past which the fan-out stops writing to it: gunicorn's
#: asgi worker pauses a response's ``send`` at the same mark (protocol.HIGH_WATER_LIMIT).
HIGH_WATER = 65536


def chunk(data: bytes) -> bytes:
    """``data`` as one chunk of a chunked HTTP/1.1 body."""
    return b"%x\r\n%s\r\n" % (len(data), data)


class Wire:
    """A stream's path to its socket, past ``send``: the transport and the fan-out's batch."""

    __slots__ = ("transport", "fanout", "ends_on_final")

    def __init__(self, transport: asyncio.WriteTransport, fanout: Fanout,
                 ends_on_final: bool) -> None:
        self.transport = transport
        self.fanout = fanout
        self.ends_on_final = ends_on_final  # a one-job stream ends with the job's final state


class Fanout:
    """The batch of streams with news, written when the event loop next runs callbacks."""

    def __init__(self, encode: Callable[[State], bytes], ping: bytes) -> None:
        self._encode = encode
        self._ping = chunk(ping)
        self._loop = asyncio.get_running_loop()
        #: The streams with news whose tasks wait, written at the next flush (``schedule``).
        self.queued: dict[Subscription, None] = {}
        self._scheduled = False
        self._last: State | None = None  # the last state framed, and its bytes: most
        self._last_chunk = b""           # rounds send one state to every stream
        self.rounds = self.writes = self.handed_back = 0
        self.cpu = 0.0  # CPU time spent in the batches (the writes, mostly the kernel's)

    def wire(self, scope: MutableMapping[str, Any], ends_on_final: bool) -> Wire | None:
        """A wire for this request's stream, if the server lent its transport (else None:
        the stream uses ``send`` only). The body must be chunked: HTTP/1.1 and no HEAD."""
        transport = scope.get("extensions", {}).get(EXTENSION)
        if (transport is None or scope.get("http_version") != "1.1"
                or scope.get("method") == "HEAD"):
            return None
        return Wire(transport, self, ends_on_final)

    def ready(self, sub: Subscription) -> None:
        """``sub`` has news and its task waits: write it in this round's batch."""
        self.queued[sub] = None
        self.schedule()

    def schedule(self) -> None:
        """Write the ``queued`` streams once the notifications at hand are applied."""
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush)

    def stats(self) -> dict[str, int | float]:
        return {"fanout_rounds": self.rounds, "fanout_writes": self.writes,
                "fanout_handed_back": self.handed_back, "fanout_cpu_s": round(self.cpu, 3)}

    def _frame(self, job: State) -> bytes:
        if job is not self._last:
            self._last, self._last_chunk = job, chunk(self._encode(job))
        return self._last_chunk

    def _flush(self) -> None:
        began = time.thread_time()
        try:
            self._write(self.queued)
        finally:
            self.cpu += time.thread_time() - began

    def _write(self, ready: dict[Subscription, None]) -> None:
        # Inlined where a call per stream showed in profiles: the mailbox is taken here as
        # Subscription.take does, and the last state's frame is kept at hand.
        self.queued = {}
        self._scheduled = False
        self.rounds += 1
        last, last_chunk = self._last, self._last_chunk
        writes = 0
        for sub in ready:
            wire, waiter = sub.wire, sub.waiter
            if wire is None or waiter is None or waiter.done():  # not `parked`: a call less
                continue  # its task is sending or has ended; it takes what waits itself
            transport = wire.transport
            if transport.is_closing() or transport.get_write_buffer_size() > HIGH_WATER:
                # A slow reader (or a gone one): its task sends the latest state when the
                # socket drains, through `send`, which waits for that.
                self.handed_back += 1
                sub.wake_task()
                continue
            latest = sub._latest
            sub._poked = False
            if not latest:
                data, job = self._ping, None
            elif len(latest) == 1:
                job = latest.popitem()[1]
                if job is not last:
                    last, last_chunk = job, chunk(self._encode(job))
                data = last_chunk
            else:
                jobs = list(latest.values())
                latest.clear()
                data = b"".join([self._frame(j) for j in jobs])
                last, last_chunk, job = self._last, self._last_chunk, jobs[-1]
            try:
                transport.write(data)
            except (OSError, RuntimeError):
                sub.close()  # the connection broke: the stream's task ends it
                continue
            writes += 1
            if wire.ends_on_final and job is not None and job.status in FINISHED:
                sub.close()  # its task ends the response after what it sent
        self._last, self._last_chunk = last, last_chunk
        self.writes += writes
