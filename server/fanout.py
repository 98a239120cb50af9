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

Most streams watch one job and keep up with it; those share the job's ``Lane``, and a state is
written to them in a loop as plain as the floor's (bench/floor.py): applying it to a thousand
mailboxes and then taking it out of each again was about half of what the batch cost beyond the
kernel's send (docs/benchmarks.md, "Live progress").
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

    __slots__ = ("transport", "fanout", "ends_on_final", "lane")

    def __init__(self, transport: asyncio.WriteTransport, fanout: Fanout,
                 ends_on_final: bool, lane: Lane | None = None) -> None:
        self.transport = transport
        self.fanout = fanout
        self.ends_on_final = ends_on_final  # a one-job stream ends with the job's final state
        self.lane = lane  # a one-job stream's lane (its job's), which it joins once in step


class Lane:
    """The streams of one job that are in step: each has been sent the job's latest state and
    its task waits. A new state is written to all of them in one plain loop, the floor's
    (bench/floor.py), with no mailbox or version touched per stream.

    A stream joins after the batch writes it the state the lane last took (``Fanout._write``)
    and leaves when its task is woken (``Subscription.close``, ``wake_task``, ``next``), when
    its socket backs up (handed back to its task with the state it missed) or breaks, and
    after the final state. While a stream is in the lane, the lane holds its mailbox's truth:
    ``version`` is what the stream has been sent, or will be at the next batch (``state``).
    """

    __slots__ = ("key", "fanout", "members", "version", "state")

    def __init__(self, key: int, fanout: Fanout, version: int = 0) -> None:
        self.key = key  # the job id's integer, as Subscription keys its mailbox
        self.fanout = fanout
        self.members: dict[Subscription, asyncio.WriteTransport] = {}
        self.version = version  # the newest version taken
        self.state: State | None = None  # that state, while it waits for the batch

    def offer(self, job: State, reset: bool = False) -> None:
        """Take ``job`` if it is newer (or ``reset``): the members get it in the next batch."""
        if job.version <= self.version and not reset:
            return
        self.version = job.version
        if not self.members:
            self.state = None  # any that left took the state before it with them
            return
        self.state = job
        self.fanout.due[self] = None
        self.fanout.schedule()

    def join(self, sub: Subscription, transport: asyncio.WriteTransport) -> None:
        self.members[sub] = transport
        sub.lane = self  # pyright: ignore[reportAttributeAccessIssue] (see Subscription._wake)

    def leave(self, sub: Subscription) -> None:
        """``sub`` goes back to its mailbox, holding what the lane has not sent it yet."""
        del self.members[sub]
        sub.lane = None
        sub._seen[self.key] = self.version
        if self.state is not None:
            sub._latest[self.key] = self.state

    def write(self) -> int:
        """Write the waiting state to every member; how many writes."""
        job = self.state
        if job is None:
            return 0
        data = self.fanout._frame(job)
        backed: list[Subscription] = []
        broken: list[Subscription] = []
        for sub, transport in self.members.items():
            if transport.get_write_buffer_size() > HIGH_WATER:
                backed.append(sub)
                continue
            try:
                transport.write(data)
            except (OSError, RuntimeError):
                broken.append(sub)
        writes = len(self.members) - len(backed) - len(broken)
        for sub in backed:  # a slow reader leaves with this state: its task sends it once the
            sub.wake_task()  # socket drains
        self.state = None
        for sub in broken:
            sub.close()  # it leaves; its task ends the stream
        self.fanout.handed_back += len(backed)
        if job.status in FINISHED:
            for sub in list(self.members):
                sub.close()  # its task ends the response after what it sent
        return writes


class Fanout:
    """The batch of streams with news, written when the event loop next runs callbacks."""

    def __init__(self, encode: Callable[[State], bytes], ping: bytes) -> None:
        self._encode = encode
        self._ping = chunk(ping)
        self._loop = asyncio.get_running_loop()
        #: The streams with news whose tasks wait, written at the next flush (``schedule``).
        self.queued: dict[Subscription, None] = {}
        #: The lanes with a state to write at the next flush.
        self.due: dict[Lane, None] = {}
        self._scheduled = False
        self._last: State | None = None  # the last state framed, and its bytes: most
        self._last_chunk = b""           # rounds send one state to every stream
        self.rounds = self.writes = self.handed_back = 0
        self.cpu = 0.0  # CPU time spent in the batches (the writes, mostly the kernel's)

    def wire(self, scope: MutableMapping[str, Any], ends_on_final: bool,
             lane: Lane | None = None) -> Wire | None:
        """A wire for this request's stream, if the server lent its transport (else None:
        the stream uses ``send`` only). The body must be chunked: HTTP/1.1 and no HEAD."""
        transport = scope.get("extensions", {}).get(EXTENSION)
        if (transport is None or scope.get("http_version") != "1.1"
                or scope.get("method") == "HEAD"):
            return None
        return Wire(transport, self, ends_on_final, lane if ends_on_final else None)

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
            self._scheduled = False
            if self.due:
                due, self.due = self.due, {}
                for lane in due:
                    self.writes += lane.write()
            self._write(self.queued)
        finally:
            self.cpu += time.thread_time() - began

    def _write(self, ready: dict[Subscription, None]) -> None:
        # The mailbox is taken inline, as Subscription.take does (a call per stream showed in
        # profiles); most job streams are written by their lane after this first write.
        self.queued = {}
        self.rounds += 1
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
                data = self._frame(job)
            else:
                jobs = list(latest.values())
                latest.clear()
                data = b"".join([self._frame(j) for j in jobs])
                job = jobs[-1]
            try:
                transport.write(data)
            except (OSError, RuntimeError):
                sub.close()  # the connection broke: the stream's task ends it
                continue
            writes += 1
            if job is None:
                continue
            if wire.ends_on_final and job.status in FINISHED:
                sub.close()  # its task ends the response after what it sent
            elif (lane := wire.lane) is not None and job.version == lane.version and not latest:
                lane.join(sub, transport)  # in step: the lane writes its next states
        self.writes += writes
