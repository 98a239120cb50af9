"""The listener in-process: payload parsing, latest-state mailboxes, reconnect and re-read."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from bgjobs.core.jobs import Attempt, Job
from bgjobs.core.store import Store
from bgjobs.server.broadcast import APPLICATION_NAME, Broadcaster, Subscription
from bgjobs.server.events_db import EventsDb, make_pool
from tests.conftest import add_job


def _job(version: int, **changes: Any) -> Job:
    now = datetime.now(UTC)
    base = Job(id=uuid.UUID(int=1), user_id=1, job_type="noop", status="running",
               progress={}, result=None, created_at=now, updated_at=now, params={}, priority=0,
               run_after=now, attempts=1, max_attempts=3, lease_seconds=30, worker_id="w",
               heartbeat_at=now, started_at=now, finished_at=None, version=version,
               idempotency_key=None, exclusive_key=None)
    return dataclasses.replace(base, **changes)


def test_a_subscription_keeps_only_the_latest_state_per_job() -> None:
    sub = Subscription(frozenset({uuid.UUID(int=1)}), None)
    for version in range(1, 10_001):
        sub.offer(_job(version, progress={"current": version}))
    assert sub.pending == 1
    sub.offer(_job(5))  # older than what waits: ignored
    other = _job(2, id=uuid.UUID(int=2))
    sub.offer(other)
    assert sub.pending == 2
    jobs = asyncio.run(sub.next())
    assert [(j.id, j.version) for j in jobs] == [(uuid.UUID(int=1), 10_000), (other.id, 2)]
    assert sub.pending == 0
    sub.sent(_job(10_005))
    sub.offer(_job(10_003))  # older than what was sent: never delivered
    assert sub.pending == 0


def test_a_workflow_subscription_keeps_the_latest_state_of_its_own_jobs_only() -> None:
    """The workflow stream's mailbox (server/workflow_stream.py): a slow client holds one state
    per job of the workflow, whatever the number of changes, and nothing of other jobs."""
    flow, elsewhere = uuid.uuid4(), uuid.uuid4()
    sub = Subscription(frozenset(), 1, workflow_id=flow)
    for n in range(1, 101):
        for version in range(1, 101):
            sub.offer(_job(version, id=uuid.UUID(int=n), workflow_id=flow))
            sub.offer(_job(version, id=uuid.UUID(int=1000 + n), workflow_id=elsewhere))
            sub.offer(_job(version, id=uuid.UUID(int=2000 + n)))  # in no workflow
    assert sub.pending == 100
    jobs = asyncio.run(sub.next())
    assert {j.id for j in jobs} == {uuid.UUID(int=n) for n in range(1, 101)}
    assert {j.version for j in jobs} == {100}
    assert set(sub.seen()) == {uuid.UUID(int=n) for n in range(1, 101)}


Loop = Callable[[], Awaitable[None]]


@asynccontextmanager
async def running_listener(url: str) -> AsyncIterator[tuple[Broadcaster, Loop, Loop]]:
    """A listener on ``url``, and functions that stop and start its loop (a lost connection)."""
    pool = make_pool(url, max_size=4)
    await pool.open(wait=True)
    listener = Broadcaster(url, EventsDb(pool))
    tasks: list[asyncio.Task[None]] = []

    async def stop() -> None:
        tasks[-1].cancel()
        with suppress(asyncio.CancelledError):
            await tasks[-1]
        listener.connected = False

    async def start() -> None:
        tasks.append(asyncio.create_task(listener.run()))
        await until(lambda: listener.connected, "the listener connected")

    await start()
    try:
        yield listener, stop, start
    finally:
        await stop()
        await pool.close()


async def until(predicate: Callable[[], object], what: str, timeout: float = 20) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


async def next_matching(sub: Subscription, predicate: Callable[[Job], bool]) -> Job:
    async with asyncio.timeout(20):
        while True:
            for job in await sub.next():
                if predicate(job):
                    return job


def test_after_a_lost_connection_watched_jobs_and_new_jobs_of_watched_users_are_re_read(
        store: Store, db_url: str) -> None:
    user, _ = store.create_user("alice")
    job = add_job(store, "noop", user_id=user.id)

    async def scenario() -> None:
        async with running_listener(db_url) as (listener, stop, start):
            by_job = listener.subscribe(job_ids=frozenset({job.id}))
            by_user = listener.subscribe(user_id=user.id)
            (claimed,) = await asyncio.to_thread(store.claim, "w", ["noop"])
            await next_matching(by_job, lambda j: j.status == "running")
            await next_matching(by_user, lambda j: j.status == "running")

            # No LISTEN connection (as if it dropped) while the job finishes and a new one is
            # created: no notification reaches anyone; only the re-read can deliver them.
            await stop()
            attempt = Attempt(job.id, "w", claimed.attempts)
            await asyncio.to_thread(store.complete, [(attempt, {"ok": True}, None)])
            new = await asyncio.to_thread(add_job, store, "noop", None, user_id=user.id)
            await start()

            final = await next_matching(by_job, lambda j: j.status == "complete")
            assert final.result == {"ok": True}
            await next_matching(by_user, lambda j: j.id == new.id)
            listener.unsubscribe(by_job)
            listener.unsubscribe(by_user)
            assert listener.stats()["subscriptions"] == 0
            assert listener.stats()["cached_jobs"] == 0

    asyncio.run(scenario())


def test_a_terminated_listen_backend_reconnects_and_bad_payloads_are_dropped(
        store: Store, db_url: str, conn: psycopg.Connection,
        caplog: pytest.LogCaptureFixture) -> None:
    user, _ = store.create_user("alice")
    caplog.set_level(logging.INFO, logger="bgjobs.server.broadcast")

    async def scenario() -> None:
        async with running_listener(db_url) as (listener, _, _):
            sub = listener.subscribe(user_id=user.id)
            await asyncio.to_thread(
                conn.execute, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = %s AND datname = current_database()",
                (APPLICATION_NAME,))
            await until(lambda: listener.reconnects >= 1 and listener.connected,
                        "the listener reconnected")
            await asyncio.to_thread(conn.execute,
                                    "SELECT pg_notify('background_jobs_progress', 'garbage')")
            job = await asyncio.to_thread(add_job, store, "noop", None, user_id=user.id)
            assert (await next_matching(sub, lambda j: j.id == job.id)).status == "pending"
            listener.unsubscribe(sub)

    asyncio.run(scenario())
    messages = [r.getMessage() for r in caplog.records]
    assert any("LISTEN connection lost" in m for m in messages), messages
    assert any("dropped an unparsable" in m and "garbage" in m for m in messages), messages


def test_an_all_jobs_stream_holds_a_bounded_latest_state_per_job(monkeypatch) -> None:
    from bgjobs.server import broadcast

    monkeypatch.setattr(broadcast, "FIREHOSE_MAX_WAITING", 3)
    sub = broadcast.Firehose()
    for n in range(1, 6):
        for version in (1, 2):
            sub.offer(_job(version, id=uuid.UUID(int=n)))
    assert sub.pending == 3 and sub.dropped == 4  # jobs 4 and 5, twice each
    assert [(j.id.int, j.version) for j in asyncio.run(sub.next())] == [(1, 2), (2, 2), (3, 2)]
    sub.offer(_job(1, id=uuid.UUID(int=1)))  # nothing remembered once sent: memory stays flat
    assert sub.pending == 1
