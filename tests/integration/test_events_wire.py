"""The fan-out's batches (server/fanout.py) on real loopback sockets, in-process."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

from bgjobs.server.broadcast import Broadcaster, State, Subscription
from bgjobs.server.events import PING, encoded
from bgjobs.server.fanout import EXTENSION, HIGH_WATER, Fanout, Lane, Wire, chunk
from tests.integration.test_events_broadcast import _job

JOB = uuid.uuid4()
BASE = _job(1, id=JOB)


@asynccontextmanager
async def wired(ends_on_final: bool = True) -> AsyncIterator[
        tuple[Broadcaster, Fanout, Subscription, asyncio.Transport, asyncio.StreamReader,
              list[list[State]]]]:
    """A job stream whose task waits in ``next`` (recording what it is handed), wired to the
    server side of a loopback connection; the reader is the client side."""
    loop = asyncio.get_running_loop()
    accepted: asyncio.Future[asyncio.Transport] = loop.create_future()

    class Server(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            accepted.set_result(transport)  # type: ignore[arg-type]

    server = await loop.create_server(Server, "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", server.sockets[0].getsockname()[1])
    transport = await accepted
    broadcaster = Broadcaster("postgresql://nowhere.invalid/none", None)  # type: ignore[arg-type]
    fanout = Fanout(encoded, PING)
    sub = broadcaster.subscribe(job_ids=frozenset({JOB}))
    handed: list[list[State]] = []

    async def stream() -> None:  # the stream's task, as _job_stream drives it
        while (jobs := await sub.next()) or not sub.closed:
            handed.append(jobs)

    task = asyncio.create_task(stream())
    await asyncio.sleep(0)
    scope = {"http_version": "1.1", "method": "GET", "extensions": {EXTENSION: transport}}
    # As job_events does: a one-job stream's wire carries its job's lane.
    sub.wire = fanout.wire(scope, ends_on_final, broadcaster.lane(JOB, fanout))
    try:
        yield broadcaster, fanout, sub, transport, reader, handed
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
        writer.close()
        transport.close()
        server.close()


def _state(version: int, status: str = "running") -> State:
    return dataclasses.replace(BASE, version=version, status=status,
                               progress={"current": version})


def test_a_burst_is_one_write_of_the_latest_state_framed_as_a_chunk_and_the_final_ends_it() -> None:
    async def scenario() -> None:
        async with wired() as (broadcaster, fanout, sub, _, reader, handed):
            for version in (2, 3, 4):  # applied together, before the batch runs
                broadcaster.publish(_state(version))  # type: ignore[arg-type]
            expected = chunk(encoded(_state(4)))
            async with asyncio.timeout(10):
                assert await reader.readexactly(len(expected)) == expected
            assert fanout.writes == 1 and fanout.rounds == 1
            final = _state(5, "complete")
            broadcaster.publish(final)  # type: ignore[arg-type]
            async with asyncio.timeout(10):
                assert await reader.readexactly(len(chunk(encoded(final)))) == chunk(
                    encoded(final))
                while not sub.closed or sub.parked:
                    await asyncio.sleep(0.01)
            # Nothing went through the stream's task: it only learns that the stream ended.
            assert handed == [] and fanout.writes == 2
            assert sub.lane is None  # the final state was the lane's: it closed the stream

    asyncio.run(scenario())


def test_a_user_stream_gets_every_waiting_job_in_one_write_and_does_not_end() -> None:
    async def scenario() -> None:
        async with wired(ends_on_final=False) as (broadcaster, fanout, sub, _, reader, _h):
            other = dataclasses.replace(_state(7, "complete"), id=uuid.uuid4())
            sub.offer(_state(6))
            sub.offer(other)
            expected = chunk(encoded(_state(6))) + chunk(encoded(other))
            async with asyncio.timeout(10):
                assert await reader.readexactly(len(expected)) == expected
            assert fanout.writes == 1 and not sub.closed and sub.parked

    asyncio.run(scenario())


def test_pings_go_out_through_the_batch_too() -> None:
    async def scenario() -> None:
        async with wired() as (broadcaster, fanout, sub, _, reader, handed):
            pings = asyncio.create_task(broadcaster.keepalive(0.01))
            try:
                async with asyncio.timeout(10):
                    assert await reader.readexactly(len(chunk(PING))) == chunk(PING)
            finally:
                pings.cancel()
            assert handed == [] and not sub.closed

    asyncio.run(scenario())


def test_a_backed_up_socket_is_handed_to_the_stream_task_with_the_latest_state_only() -> None:
    async def scenario() -> None:
        async with wired() as (broadcaster, fanout, sub, transport, _, handed):
            # The client reads nothing: past the kernel's buffers, bytes wait in the transport.
            transport.write(b"x" * (32 << 20))
            assert transport.get_write_buffer_size() > HIGH_WATER
            for version in (2, 3):
                broadcaster.publish(_state(version))  # type: ignore[arg-type]
            async with asyncio.timeout(10):
                while not handed:
                    await asyncio.sleep(0.01)
            assert fanout.handed_back == 1 and fanout.writes == 0
            assert [[j.version for j in jobs] for jobs in handed] == [[3]]

    asyncio.run(scenario())


def test_a_closed_connection_is_handed_back_and_a_failing_write_ends_the_stream() -> None:
    async def scenario() -> None:
        async with wired() as (broadcaster, fanout, sub, transport, _, handed):
            transport.close()
            broadcaster.publish(_state(2))  # type: ignore[arg-type]
            async with asyncio.timeout(10):
                while not handed:
                    await asyncio.sleep(0.01)
            assert fanout.handed_back == 1 and fanout.writes == 0

        async with wired() as (broadcaster, fanout, sub, _, _r, handed):
            sub.wire = Wire(_Broken(), fanout, True)  # type: ignore[arg-type]
            broadcaster.publish(_state(2))  # type: ignore[arg-type]
            async with asyncio.timeout(10):
                while sub.parked or not sub.closed:
                    await asyncio.sleep(0.01)
            assert fanout.writes == 0

    asyncio.run(scenario())


async def _read(reader: asyncio.StreamReader, *states: State) -> None:
    expected = b"".join(chunk(encoded(s)) for s in states)
    async with asyncio.timeout(10):
        assert await reader.readexactly(len(expected)) == expected


async def _in_lane(broadcaster: Broadcaster, sub: Subscription,
                   reader: asyncio.StreamReader) -> Lane:
    """Version 2 written by the batch, after which the stream is in its job's lane."""
    broadcaster.publish(_state(2))  # type: ignore[arg-type]
    await _read(reader, _state(2))
    assert sub.lane is not None
    return sub.lane


def test_a_stream_in_step_joins_its_jobs_lane_which_writes_later_states_past_its_mailbox(
) -> None:
    async def scenario() -> None:
        async with wired() as (broadcaster, fanout, sub, _, reader, handed):
            lane = broadcaster.lane(JOB, fanout)
            assert sub.lane is None
            broadcaster.publish(_state(2))  # type: ignore[arg-type]
            await _read(reader, _state(2))  # by the batch, from its mailbox; then it joins
            assert sub.lane is lane and list(lane.members) == [sub]
            for version in (3, 4):  # a burst: one write of the latest
                broadcaster.publish(_state(version))  # type: ignore[arg-type]
            assert sub.pending == 0 and lane.state is not None  # the lane holds it
            await _read(reader, _state(4))
            assert sub.seen() == {JOB: 4} and sub.lane is lane
            # A version already sent is not sent again; a reset one (the row went back) is.
            lane.offer(_state(4))
            broadcaster.publish(_state(2), reset=True)  # type: ignore[arg-type]
            await _read(reader, _state(2))
            assert fanout.writes == 3 and handed == [] and sub.parked
            broadcaster.unsubscribe(sub)  # the last stream of the job: its lane goes
            assert sub.lane is None and broadcaster.lane(JOB, fanout) is not lane

    asyncio.run(scenario())


def test_a_backed_up_socket_leaves_the_lane_for_its_task_with_the_latest_state_only() -> None:
    async def scenario() -> None:
        async with wired() as (broadcaster, fanout, sub, transport, reader, handed):
            await _in_lane(broadcaster, sub, reader)
            transport.write(b"x" * (32 << 20))  # the client stops reading
            for version in (3, 4):
                broadcaster.publish(_state(version))  # type: ignore[arg-type]
            async with asyncio.timeout(10):
                while not handed:
                    await asyncio.sleep(0.01)
            assert [[j.version for j in jobs] for jobs in handed] == [[4]]
            assert sub.lane is None and fanout.handed_back == 1 and fanout.writes == 1
            assert sub.seen() == {JOB: 4}

    asyncio.run(scenario())


def test_a_stream_closed_in_the_lane_gets_what_the_lane_held_and_a_revoked_one_nothing(
) -> None:
    async def scenario() -> None:
        for revoked in (False, True):
            async with wired() as (broadcaster, fanout, sub, _, reader, handed):
                await _in_lane(broadcaster, sub, reader)
                broadcaster.publish(_state(3))  # type: ignore[arg-type]
                # Before the batch runs, the client leaves (or its token is revoked).
                sub.revoke() if revoked else sub.close()
                async with asyncio.timeout(10):
                    while sub.parked or sub.waiter is not None:
                        await asyncio.sleep(0.01)
                await asyncio.sleep(0.05)
                assert sub.lane is None and fanout.writes == 1
                # Closed: its task takes the state the lane held, then ends; revoked: nothing.
                assert [[j.version for j in jobs] for jobs in handed] == (
                    [] if revoked else [[3]])

    asyncio.run(scenario())


def test_a_failing_write_in_the_lane_ends_the_stream() -> None:
    async def scenario() -> None:
        async with wired() as (broadcaster, fanout, sub, _, reader, handed):
            lane = await _in_lane(broadcaster, sub, reader)
            lane.members[sub] = _Broken()  # type: ignore[assignment]
            broadcaster.publish(_state(3))  # type: ignore[arg-type]
            async with asyncio.timeout(10):
                while sub.parked or not sub.closed:
                    await asyncio.sleep(0.01)
            assert sub.lane is None and not lane.members and fanout.writes == 1

    asyncio.run(scenario())


class _Broken:
    """A transport whose socket fails on write (none of asyncio's raise: uvloop can)."""

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def write(self, data: bytes) -> None:
        raise ConnectionResetError("reset by peer")


def test_no_wire_without_the_servers_transport_nor_for_heads_or_http_1_0() -> None:
    async def scenario() -> None:
        fanout = Fanout(encoded, PING)
        transport: Any = object()
        assert fanout.wire({"http_version": "1.1", "method": "GET"}, True) is None
        for version, method in (("1.0", "GET"), ("1.1", "HEAD"), ("2", "GET")):
            scope = {"http_version": version, "method": method,
                     "extensions": {EXTENSION: transport}}
            assert fanout.wire(scope, True) is None
        scope = {"http_version": "1.1", "method": "GET", "extensions": {EXTENSION: transport}}
        assert isinstance(fanout.wire(scope, True), Wire)

    asyncio.run(scenario())
