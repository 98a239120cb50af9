"""A row whose version goes back (a restore, a failover to an asynchronous replica, a crash that
lost commits) still reaches every stream: nothing is dropped for having a version seen before."""

from __future__ import annotations

import asyncio

import psycopg

from bgjobs.core.jobs import Attempt, Job
from bgjobs.core.store import Store
from bgjobs.server.broadcast import Subscription
from tests.conftest import add_job
from tests.integration.test_events_broadcast import _job, next_matching, running_listener


def restore(url: str, job: Job, version: int, status: str, progress: dict) -> None:
    """Put the row back as an older copy of it would be: same id, a lower version."""
    with psycopg.connect(url) as conn, conn.transaction():
        conn.execute("DELETE FROM background_jobs WHERE id = %s", [job.id])
        conn.execute("INSERT INTO background_jobs (id, user_id, job_type, status, progress, "
                     "version, created_at) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                     [job.id, job.user_id, job.job_type, status,
                      psycopg.types.json.Jsonb(progress), version, job.created_at])


def test_a_subscription_takes_a_reset_state_it_has_seen_a_higher_version_of() -> None:
    sub = Subscription(frozenset({_job(1).id}), None)
    sub.sent(_job(6))
    sub.offer(_job(2))  # an older state: a late read, not news
    assert sub.pending == 0
    restored = _job(2, status="complete")
    sub.offer(restored, reset=True)
    assert asyncio.run(sub.next()) == [restored]
    sub.offer(_job(3, status="complete"))  # newer than the reset state: goes through
    assert [j.version for j in asyncio.run(sub.next())] == [3]


def test_open_streams_follow_a_row_that_went_back(store: Store, db_url: str) -> None:
    user, _ = store.create_user("alice")
    job = add_job(store, "noop", user_id=user.id)

    async def scenario() -> None:
        async with running_listener(db_url) as (listener, _, _):
            by_job = listener.subscribe(job_ids=frozenset({job.id}))
            by_user = listener.subscribe(user_id=user.id)
            listener.publish(job)
            (claimed,) = await asyncio.to_thread(store.claim, "w", ["noop"])
            attempt = Attempt(job.id, "w", claimed.attempts)
            for step in range(1, 5):
                await asyncio.to_thread(store.report_progress,
                                        [(attempt, {"current": step, "total": 4})])
            for sub in (by_job, by_user):
                high = await next_matching(sub, lambda j: j.progress == {"current": 4,
                                                                           "total": 4})
            assert high.version == 6

            await asyncio.to_thread(restore, db_url, job, 2, "running", {"restored": True})
            for sub in (by_job, by_user):
                back = await next_matching(sub, lambda j: j.version == 2)
                assert back.progress == {"restored": True}

            # Later changes of the restored row count from its version, not from the old 6.
            await asyncio.to_thread(store.cancel, job.id)
            for sub in (by_job, by_user):
                final = await next_matching(sub, lambda j: j.status == "cancelled")
                assert final.version == 3
            listener.unsubscribe(by_job)
            listener.unsubscribe(by_user)

    asyncio.run(scenario())


def test_a_row_that_went_back_during_an_outage_is_sent_on_reconnect(store: Store,
                                                                    db_url: str) -> None:
    user, _ = store.create_user("alice")
    job = add_job(store, "noop", user_id=user.id)

    async def scenario() -> None:
        async with running_listener(db_url) as (listener, stop, start):
            sub = listener.subscribe(job_ids=frozenset({job.id}))
            listener.publish(job)
            (claimed,) = await asyncio.to_thread(store.claim, "w", ["noop"])
            attempt = Attempt(job.id, "w", claimed.attempts)
            await asyncio.to_thread(store.complete, [(attempt, {"first": True}, None)])
            done = await next_matching(sub, lambda j: j.status == "complete")
            assert done.version == 3

            # The failover: the new primary had the job only as it was at insert, pending.
            await stop()
            await asyncio.to_thread(restore, db_url, job, 1, "pending", {})
            await start()
            back = await next_matching(sub, lambda j: j.status == "pending")
            assert back.version == 1
            listener.unsubscribe(sub)

    asyncio.run(scenario())


def test_a_stream_on_a_job_gone_during_an_outage_ends_on_reconnect(store: Store,
                                                                   db_url: str) -> None:
    """The new primary never had the job (a failover to an asynchronous standby lost its
    insert): its stream ends instead of waiting for ever; the client's reconnection gets a 404.
    A stream watching its user stays open."""
    user, _ = store.create_user("alice")
    job, kept = add_job(store, "noop", user_id=user.id), add_job(store, "noop", user_id=user.id)

    async def scenario() -> None:
        async with running_listener(db_url) as (listener, stop, start):
            gone = listener.subscribe(job_ids=frozenset({job.id}))
            other = listener.subscribe(job_ids=frozenset({kept.id}))
            by_user = listener.subscribe(user_id=user.id)
            for j in (job, kept):
                listener.publish(j)
            assert await gone.next() == [job]  # the state a stream sends first
            await stop()
            with psycopg.connect(db_url, autocommit=True) as conn:
                conn.execute("DELETE FROM background_jobs WHERE id = %s", [job.id])
            await start()
            async with asyncio.timeout(20):
                assert await gone.next() == [] and gone.closed
            assert not other.closed and not by_user.closed
            for sub in (gone, other, by_user):
                listener.unsubscribe(sub)

    asyncio.run(scenario())


def test_a_stream_opened_while_the_reconnect_reads_is_not_taken_for_gone(store: Store,
                                                                          db_url: str) -> None:
    """A stream that subscribes while the reconnected listener re-reads the watched jobs (its
    job was not among those read) stays open and gets the job's next state: only a job the
    read looked for and did not find is gone."""
    user, _ = store.create_user("alice")
    watched, late = add_job(store, "noop", user_id=user.id), add_job(store, "noop", user_id=user.id)

    async def scenario() -> None:
        async with running_listener(db_url) as (listener, stop, start):
            first = listener.subscribe(job_ids=frozenset({watched.id}))
            await stop()
            arrived: list[Subscription] = []
            read = listener.db.get_jobs

            async def get_jobs_while_a_stream_arrives(ids):  # type: ignore[no-untyped-def]
                if not arrived:  # the stream's subscription lands during the resync's read
                    arrived.append(listener.subscribe(job_ids=frozenset({late.id})))
                return await read(ids)

            listener.db.get_jobs = get_jobs_while_a_stream_arrives  # type: ignore[method-assign]
            await start()
            [sub] = arrived
            assert not sub.closed and not first.closed
            with psycopg.connect(db_url, autocommit=True) as conn:
                conn.execute("UPDATE background_jobs SET status = 'cancelled' WHERE id = %s",
                             [late.id])
            got = await next_matching(sub, lambda j: j.id == late.id)
            assert got.status == "cancelled"
            for s in (first, sub):
                listener.unsubscribe(s)

    asyncio.run(scenario())
