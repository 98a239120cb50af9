"""bgjobs.aio against a real Postgres: the sync API's behaviour and errors, awaited; the
caller's AsyncConnection transaction respected; one pool per event loop."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest

import bgjobs
import bgjobs.aio
from bgjobs.core.apool import make_pool
from bgjobs.core.astore import AsyncStore
from bgjobs.core.errors import ConfigError
from bgjobs.core.jobs import Attempt
from bgjobs.core.store import Store
from tests.conftest import doc_code, drain, wait_for
from tests.integration.test_enqueue import EXCLUSIVE
from tests.procs import free_port


def run(db_url: str, body: Callable[[AsyncStore], Awaitable[Any]]) -> Any:
    """Run ``body`` with an AsyncStore of its own on ``db_url``, on a new event loop."""

    async def main() -> Any:
        pool = make_pool(db_url, max_size=4)
        await pool.open(wait=True)
        try:
            return await body(AsyncStore(pool))
        finally:
            await pool.close()

    return asyncio.run(main())


def count_jobs(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT count(*) FROM background_jobs").fetchone()[0]


def finish(store: Store, job_id: uuid.UUID, result: object = None) -> None:
    """Claim and complete the one due job, as a worker would."""
    [spec] = store.claim_specs("w", ["noop"])
    assert spec.id == job_id
    store.complete([(Attempt(job_id, "w", spec.attempt), result, None)])


def test_enqueue_get_and_cancel_are_the_sync_ones_awaited(db_url, store: Store):
    alice, _ = store.create_user("alice")
    bob, _ = store.create_user("bob")
    later = datetime.now().astimezone() + timedelta(hours=1)

    async def body(s: AsyncStore) -> None:
        job = await bgjobs.aio.enqueue("noop", {"echo": 1}, user_id=alice.id, run_after=later,
                                       store=s)
        assert job == store.get_job(job.id)  # what it returns is the stored row
        assert await bgjobs.aio.get_job(job.id, user_id=alice.id, store=s) == job
        assert await bgjobs.aio.get_job(str(job.id), store=s) == job
        assert await bgjobs.aio.get_job(job.id, user_id=bob.id, store=s) is None
        assert await bgjobs.aio.get_job("not-a-uuid", store=s) is None
        with pytest.raises(bgjobs.NotFound):
            await bgjobs.aio.cancel(job.id, user_id=bob.id, store=s)
        cancelled = await bgjobs.aio.cancel(job.id, user_id=alice.id, store=s)
        assert cancelled.status == "cancelled"
        with pytest.raises(bgjobs.Conflict, match="already finished") as done:
            await bgjobs.aio.cancel(job.id, store=s)
        assert done.value.job_id == job.id

    run(db_url, body)


def test_enqueue_many_is_in_order_and_matches_the_stored_rows(db_url, store: Store, conn):
    async def body(s: AsyncStore) -> list[bgjobs.Job]:
        assert await bgjobs.aio.enqueue_many("noop", [], store=s) == []
        return await bgjobs.aio.enqueue_many("noop", [{"echo": n} for n in range(50)], store=s)

    jobs = run(db_url, body)
    assert [j.params["echo"] for j in jobs] == list(range(50))
    stored = {j.id: j for j in store.get_jobs(j.id for j in jobs)}
    assert jobs == [stored[j.id] for j in jobs]
    assert count_jobs(conn) == 50


@pytest.mark.parametrize(("call", "error", "message"), [
    (lambda s: bgjobs.aio.enqueue("nope", store=s), bgjobs.UnknownTask,
     "unknown job type 'nope'"),
    (lambda s: bgjobs.aio.enqueue(EXCLUSIVE, {"tickers": 0}, store=s), bgjobs.InvalidParams,
     "tickers must be at least 1"),
    (lambda s: bgjobs.aio.enqueue("noop", {"echo": float("nan")}, store=s),
     bgjobs.InvalidParams, "not JSON"),
    (lambda s: bgjobs.aio.enqueue("noop", priority=5000, store=s), bgjobs.InvalidRequest,
     "priority must be between"),
    (lambda s: bgjobs.aio.enqueue("noop", run_after=datetime(2030, 1, 1), store=s),
     bgjobs.InvalidRequest, "timezone"),
    (lambda s: bgjobs.aio.enqueue("noop", idempotency_key="commande-été", store=s),
     bgjobs.InvalidRequest, "printable ASCII"),
    (lambda s: bgjobs.aio.enqueue("noop", after="not-a-list", store=s),
     bgjobs.InvalidRequest, "after must be a list"),
    (lambda s: bgjobs.aio.enqueue("noop", workflow_id="x", store=s),
     bgjobs.InvalidRequest, "workflow_id must be a UUID"),
    (lambda s: bgjobs.aio.enqueue("noop", user_id=424242, store=s), bgjobs.InvalidInput,
     "no such user"),
    (lambda s: bgjobs.aio.enqueue("noop", after=[uuid.uuid4()], store=s), bgjobs.InvalidInput,
     "after"),
    (lambda s: bgjobs.aio.enqueue_many(EXCLUSIVE, [{}, {}], store=s), bgjobs.InvalidRequest,
     "exclusive"),
    (lambda s: bgjobs.aio.enqueue_many("noop", [{}, {"bogus": 1}], store=s),
     bgjobs.InvalidParams, r"params_list\[1\]"),
    (lambda s: bgjobs.aio.cancel(uuid.uuid4(), store=s), bgjobs.NotFound, "no job"),
    (lambda s: bgjobs.aio.wait(uuid.uuid4(), store=s), bgjobs.NotFound, "no job"),
    (lambda s: bgjobs.aio.wait_workflow(uuid.uuid4(), store=s), bgjobs.NotFound,
     "no workflow"),
    (lambda s: bgjobs.aio.wait(uuid.uuid4(), timeout=-1, store=s), ValueError, "timeout"),
])
def test_bad_input_is_refused_with_the_sync_errors_and_stores_nothing(db_url, conn, call,
                                                                      error, message):
    async def body(s: AsyncStore) -> None:
        with pytest.raises(error, match=message):
            await call(s)

    run(db_url, body)
    assert count_jobs(conn) == 0


def test_idempotency_and_exclusivity_follow_the_sync_rules(db_url):
    async def body(s: AsyncStore) -> None:
        job = await bgjobs.aio.enqueue("noop", {"echo": 1}, idempotency_key="order-7", store=s)
        again = await bgjobs.aio.submit("noop", {"echo": 1}, idempotency_key="order-7", store=s)
        assert again.job == job and not again.created
        with pytest.raises(bgjobs.Conflict, match="different job"):
            await bgjobs.aio.enqueue("noop", {"echo": 2}, idempotency_key="order-7", store=s)
        first = await bgjobs.aio.enqueue(EXCLUSIVE, {"tickers": 5}, store=s)
        assert first.exclusive_key == EXCLUSIVE and first.params["years"] == 8
        with pytest.raises(bgjobs.Conflict) as clash:
            await bgjobs.aio.enqueue(EXCLUSIVE, {"tickers": 6}, store=s)
        assert clash.value.job_id == first.id
        with pytest.raises(bgjobs.Conflict):
            await bgjobs.aio.enqueue_many(EXCLUSIVE, [{"tickers": 6}], store=s)

    run(db_url, body)


@pytest.mark.parametrize("setup", [
    pytest.param({"row_factory": psycopg.rows.dict_row}, id="dict_row"),
    pytest.param({"cursor_factory": psycopg.AsyncClientCursor}, id="AsyncClientCursor"),
    pytest.param({"cursor_factory": psycopg.AsyncRawCursor}, id="AsyncRawCursor"),
])
def test_the_callers_connection_may_have_its_own_rows_and_cursors(db_url, store: Store, setup):
    async def body(s: AsyncStore) -> list[Any]:
        async with await psycopg.AsyncConnection.connect(db_url, **setup) as app:
            job = await bgjobs.aio.enqueue("noop", {"echo": 1}, conn=app, store=s)
            first = await bgjobs.aio.submit("noop", idempotency_key="k", conn=app, store=s)
            again = await bgjobs.aio.submit("noop", idempotency_key="k", conn=app, store=s)
            many = await bgjobs.aio.enqueue_many("noop", [{"echo": 2}], conn=app, store=s)
            await app.commit()
        return [job, first, again, many]

    job, first, again, many = run(db_url, body)
    assert (again.job, again.created) == (first.job, False)
    assert store.get_job(job.id) == job and [store.get_job(j.id) for j in many] == many


def test_inside_the_callers_transaction_a_rollback_leaves_no_job_and_no_notification(
        db_url, listener, conn):
    async def body(s: AsyncStore) -> list[bgjobs.Job]:
        async with await psycopg.AsyncConnection.connect(db_url) as app:
            await app.execute("SELECT 1")  # the app's own work, in its transaction
            await bgjobs.aio.enqueue("noop", {"echo": "rolled back"}, conn=app, store=s)
            await bgjobs.aio.enqueue_many("noop", [{}, {}], conn=app, store=s)
            await app.rollback()
            assert drain(listener) == []
            assert count_jobs(conn) == 0
            kept = await bgjobs.aio.enqueue("noop", {"echo": "kept"}, conn=app, store=s)
            # A clash inside it does not abort it either.
            await bgjobs.aio.enqueue("noop", idempotency_key="k", conn=app, store=s)
            assert (await bgjobs.aio.submit("noop", idempotency_key="k", conn=app,
                                            store=s)).created is False
            assert drain(listener) == []  # not before the commit
            await app.commit()
        return [kept]

    [kept] = run(db_url, body)
    assert ("background_jobs_new", "noop") in drain(listener)
    assert count_jobs(conn) == 2
    assert conn.execute("SELECT count(*) FROM background_jobs WHERE id = %s",
                        (kept.id,)).fetchone()[0] == 1


def test_wait_is_woken_by_the_notification_of_the_end(db_url, store: Store):
    async def body(s: AsyncStore) -> None:
        job = await bgjobs.aio.enqueue("noop", store=s)
        with pytest.raises(bgjobs.WaitTimeout) as late:
            await bgjobs.aio.wait(job.id, timeout=0.2, store=s)
        assert late.value.job.status == "pending"
        waiting = asyncio.create_task(bgjobs.aio.wait(job.id, timeout=10, store=s))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        await asyncio.to_thread(finish, store, job.id, {"ok": 1})
        done = await waiting
        assert done.status == "complete" and done.result == {"ok": 1}
        assert (await bgjobs.aio.wait(job.id, store=s)) == done  # finished: at once

    run(db_url, body)


def test_wait_workflow_returns_once_every_job_has_ended(db_url, store: Store):
    workflow_id = uuid.uuid4()

    async def body(s: AsyncStore) -> None:
        jobs = await bgjobs.aio.enqueue_many("noop", [{}, {}], workflow_id=workflow_id, store=s)
        found = await bgjobs.aio.get_workflow(workflow_id, store=s)
        assert found is not None and {j.id for j in found.jobs} == {j.id for j in jobs}
        assert await bgjobs.aio.get_workflow(uuid.uuid4(), store=s) is None
        with pytest.raises(bgjobs.WaitTimeout) as late:
            await bgjobs.aio.wait_workflow(workflow_id, timeout=0.2, store=s)
        assert not late.value.workflow.finished
        waiting = asyncio.create_task(bgjobs.aio.wait_workflow(workflow_id, timeout=10,
                                                               store=s))
        for job in sorted(jobs, key=lambda j: j.created_at):
            await asyncio.to_thread(finish, store, job.id)
        workflow = await waiting
        assert workflow.finished and {j.status for j in workflow.jobs} == {"complete"}

    run(db_url, body)


def test_an_unreachable_database_is_database_unavailable(db_url):
    gone = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"

    async def main() -> None:
        pool = make_pool(gone, max_size=1, timeout=2)
        await pool.open(wait=False)
        try:
            s = AsyncStore(pool)
            for call in (bgjobs.aio.enqueue("noop", store=s),
                         bgjobs.aio.get_job(uuid.uuid4(), store=s),
                         bgjobs.aio.cancel(uuid.uuid4(), store=s),
                         bgjobs.aio.wait(uuid.uuid4(), store=s)):
                with pytest.raises(bgjobs.DatabaseUnavailable):
                    await call
        finally:
            await pool.close()

    asyncio.run(main())


def test_each_event_loop_gets_a_pool_of_its_own_closed_with_the_loop(db_url, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", db_url)
    stores: list[AsyncStore] = []
    start = threading.Barrier(2)
    failures: list[BaseException] = []

    async def use() -> None:
        first, second = await asyncio.gather(bgjobs.aio.default_store(),
                                             bgjobs.aio.default_store())
        assert first is second  # coroutines arriving together share one pool
        stores.append(first)
        job = await bgjobs.aio.enqueue("noop", {"echo": "default"})
        assert await bgjobs.aio.get_job(job.id) == job

    def in_thread() -> None:
        start.wait()
        try:
            asyncio.run(use())
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=in_thread) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures
    assert len(stores) == 2 and stores[0] is not stores[1]
    assert all(s.pool.closed for s in stores)  # asyncio.run's end closed each loop's pool
    assert not bgjobs.aio._pools
    wait_for(lambda: not aio_connections(db_url), message="the pools' connections to close")


def test_a_loop_that_ends_while_its_pool_grows_ends_and_closes_every_connection(
        db_url, monkeypatch, caplog):
    # Seen: a pool worker cancelled by asyncio.run's end while it connected swallowed the
    # cancellation and waited for work for ever, and asyncio.run with it; and the pool's
    # idle connections stayed open until the process exited.
    monkeypatch.setenv("DATABASE_URL", db_url)
    # psycopg_pool logs the cut connection attempt with its exception, whose frames hold the
    # half-made connection: pytest keeps log records, so it would keep that connection open.
    caplog.set_level(logging.ERROR, logger="psycopg.pool")

    async def busy() -> None:
        await asyncio.gather(*(bgjobs.aio.get_job(uuid.uuid4()) for _ in range(16)))

    for _ in range(3):
        runner = threading.Thread(target=asyncio.run, args=(busy(),), daemon=True)
        runner.start()
        runner.join(timeout=20)
        assert not runner.is_alive(), "asyncio.run did not end"
    wait_for(lambda: not aio_connections(db_url), message="the pools' connections to close")


def aio_connections(db_url: str) -> int:
    """The pools' connections still open (a connection cut short while it was being made is
    garbage, closed when collected)."""
    gc.collect()
    with psycopg.connect(db_url) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                            "'bgjobs-aio' AND datname = current_database()").fetchone()[0]


def test_close_closes_this_loops_pool_and_the_next_call_opens_another(db_url, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", db_url)

    async def main() -> None:
        first = await bgjobs.aio.default_store()
        await bgjobs.aio.close()
        assert first.pool.closed
        second = await bgjobs.aio.default_store()
        assert second is not first and await bgjobs.aio.get_job(uuid.uuid4()) is None
        await bgjobs.aio.close()
        await bgjobs.aio.close()  # nothing open: nothing to do
        assert second.pool.closed

    asyncio.run(main())


def test_without_a_database_the_first_call_fails_and_the_next_tries_again(db_url, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "not a url")

    async def main() -> None:
        with pytest.raises(ConfigError, match="not a Postgres connection URL"):
            await bgjobs.aio.get_job(uuid.uuid4())
        assert not bgjobs.aio._pools
        monkeypatch.setenv("DATABASE_URL", db_url)
        assert await bgjobs.aio.get_job(uuid.uuid4()) is None

    asyncio.run(main())


def test_the_docs_example_runs_as_written(db_url, monkeypatch, capsys):
    monkeypatch.setenv("DATABASE_URL", db_url)
    exec(doc_code("aio.md", "## Example", "python"), {"__name__": "doc"})
    lines = capsys.readouterr().out.split("\n")
    assert lines[0].endswith(" pending") and lines[1:3] == ["pending", "cancelled"]
    assert not bgjobs.aio._pools  # asyncio.run's end closed the loop's pool


def test_configure_points_new_pools_elsewhere(db_url, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:1/nothing")
    with pytest.raises(ConfigError, match="not a Postgres connection URL"):
        bgjobs.aio.configure("not a url")
    bgjobs.aio.configure(db_url, pool_max=2)
    try:
        async def main() -> None:
            store = await bgjobs.aio.default_store()
            assert store.pool.max_size == 2
            assert await bgjobs.aio.get_job(uuid.uuid4()) is None

        asyncio.run(main())
    finally:
        bgjobs.aio.configure()
