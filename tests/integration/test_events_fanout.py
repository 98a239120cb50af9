"""The events service's fan-out at scale: bursts, bulk inserts, shared encodings, pings."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from contextlib import suppress
from datetime import timedelta

import psycopg
from psycopg.types.json import Jsonb

import bgjobs
from bgjobs.core.jobs import Attempt
from bgjobs.core.store import Store
from bgjobs.server.broadcast import Broadcaster, Subscription
from bgjobs.server.events import encoded
from tests.conftest import add_job
from tests.integration.test_events_broadcast import _job, next_matching, running_listener


def test_a_burst_committed_at_once_reaches_a_stream_as_its_latest_state(
        store: Store, db_url: str) -> None:
    job = add_job(store, "noop")

    async def scenario() -> None:
        async with running_listener(db_url) as (listener, _, _):
            sub = listener.subscribe(job_ids=frozenset({job.id}))
            listener.publish(job)  # the row, as a stream reads it first
            await sub.next()

            def burst() -> None:
                with psycopg.connect(db_url) as c:  # 30 updates, one commit
                    for n in range(1, 31):
                        c.execute("UPDATE background_jobs SET progress = %s WHERE id = %s",
                                  [Jsonb({"current": n}), job.id])

            await asyncio.to_thread(burst)
            received = []
            async with asyncio.timeout(20):
                while not received or received[-1].progress != {"current": 30}:
                    received += await sub.next()
            # The whole burst is applied before any stream sends: the stream is handed the
            # latest state, not thirty rounds of sends behind.
            assert len(received) <= 2, [j.progress for j in received]
            assert received[-1].version == job.version + 30

    asyncio.run(scenario())


def test_jobs_inserted_in_bulk_reach_their_owners_stream(store: Store, db_url: str) -> None:
    user, _ = store.create_user("bulk_owner")
    other, _ = store.create_user("bulk_other")

    async def scenario() -> None:
        async with running_listener(db_url) as (listener, _, _):
            sub = listener.subscribe(user_id=user.id)
            await asyncio.to_thread(bgjobs.enqueue_many, "noop", [{}, {}],
                                    user_id=other.id, store=store)
            made = await asyncio.to_thread(
                bgjobs.enqueue_many, "noop", [{"echo": n} for n in range(150)],
                user_id=user.id, store=store)
            seen: set[uuid.UUID] = set()
            async with asyncio.timeout(20):
                while len(seen) < len(made):
                    seen |= {j.id for j in await sub.next()}
            # The other user's jobs came first and were not offered: nothing else waits.
            assert seen == {j.id for j in made} and sub.pending == 0

    asyncio.run(scenario())


def test_a_state_is_encoded_once_for_every_stream() -> None:
    a = _job(7, progress={"current": 1})
    b = dataclasses.replace(a)  # the same state, another object (another read)
    assert encoded(a) is encoded(b)
    assert encoded(dataclasses.replace(a, version=8)) is not encoded(a)
    # A row that went back to version 7 (a restore) is another state: encoded anew.
    restored = dataclasses.replace(a, progress={"current": 0},
                                   updated_at=a.updated_at - timedelta(hours=1))
    assert b'"current":0' in encoded(restored)
    assert encoded(a).startswith(b"id: 7\r\ndata: {") and encoded(a).endswith(b"\r\n\r\n")


def test_keepalive_wakes_idle_streams_without_closing_them() -> None:
    async def scenario() -> None:
        broadcaster = Broadcaster("postgresql://nowhere.invalid/none", None)  # type: ignore[arg-type]
        sub = broadcaster.subscribe(job_ids=frozenset({uuid.uuid4()}))
        pings = asyncio.create_task(broadcaster.keepalive(0.01))
        try:
            async with asyncio.timeout(5):
                assert await sub.next() == [] and not sub.closed
        finally:
            pings.cancel()
            with suppress(asyncio.CancelledError):
                await pings
        sub.offer(_job(3, id=next(iter(sub.job_ids))))
        assert [j.version for j in await sub.next()] == [3]
        broadcaster.close_all()
        assert await sub.next() == [] and sub.closed

    asyncio.run(scenario())


def test_subscription_next_returns_at_once_after_a_poke() -> None:
    sub = Subscription(frozenset(), None)
    sub.poke()
    assert asyncio.run(sub.next()) == []


def test_a_job_finished_in_a_workers_batch_reaches_its_stream(store: Store, db_url: str) -> None:
    jobs = [add_job(store, "noop") for _ in range(3)]

    async def scenario() -> None:
        async with running_listener(db_url) as (listener, _, _):
            sub = listener.subscribe(job_ids=frozenset({jobs[1].id}))
            claimed = await asyncio.to_thread(store.claim, "w", ["noop"], limit=3)
            await asyncio.to_thread(store.complete, [
                (Attempt(c.id, "w", c.attempts), {"n": i}, None) for i, c in enumerate(claimed)])
            final = await next_matching(sub, lambda j: j.status == "complete")
            assert final == store.get_job(jobs[1].id)

    asyncio.run(scenario())
