"""bgjobs on an event loop: the public API of ``bgjobs``, awaited. See docs/aio.md.

    import bgjobs.aio

    job = await bgjobs.aio.enqueue("report", {"account": 7}, user_id=user_id)
    await bgjobs.aio.get_job(job.id)          # a bgjobs.Job, or None
    await bgjobs.aio.cancel(job.id)
    await bgjobs.aio.wait(job.id, timeout=60)  # the finished Job, woken by NOTIFY

The same checks and errors as the sync functions (they share tasks/enqueue.py's ``prepare``,
the same SQL and core/store_jobs.py's reading of its answers); ``conn=`` joins the caller's
``psycopg.AsyncConnection`` transaction. Without ``conn=`` or ``store=``, each event loop gets
a pool of its own on first use (DATABASE_URL, or ``configure``), closed when ``asyncio.run``
ends the loop (its async generators are shut down) or at ``await bgjobs.aio.close()``.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg

from bgjobs.core import channels
from bgjobs.core import config as config_mod
from bgjobs.core.apool import make_pool
from bgjobs.core.astore import AsyncStore
from bgjobs.core.connections import translate_errors
from bgjobs.core.db import database_url
from bgjobs.core.errors import DatabaseUnavailable, NotFound, first_line
from bgjobs.core.jobs import FINISHED, Job, Workflow, parse_job_id
from bgjobs.tasks.enqueue import Enqueued, enqueued, prepare, prepare_many
from bgjobs.tasks.wait import (
    REREAD_SECONDS,
    WaitTimeout,
    deadline_of,
    left_of,
    may_have_finished,
    names_any,
)

__all__ = ["cancel", "close", "configure", "default_store", "enqueue", "enqueue_many",
           "get_job", "get_workflow", "submit", "wait", "wait_workflow"]


async def enqueue(
    job_type: str,
    params: dict[str, Any] | None = None,
    *,
    user_id: int | None = None,
    priority: int = 0,
    run_after: datetime | None = None,
    idempotency_key: str | None = None,
    after: Sequence[Job | UUID | str] | None = None,
    run_if_dependency_fails: bool = False,
    workflow_id: UUID | str | None = None,
    conn: psycopg.AsyncConnection | None = None,
    store: AsyncStore | None = None,
) -> Job:
    """``bgjobs.enqueue``, awaited: the job (pending), with the same checks and errors."""
    return (await submit(job_type, params, user_id=user_id, priority=priority,
                         run_after=run_after, idempotency_key=idempotency_key, after=after,
                         run_if_dependency_fails=run_if_dependency_fails,
                         workflow_id=workflow_id, conn=conn, store=store)).job


async def submit(
    job_type: str,
    params: dict[str, Any] | None = None,
    *,
    user_id: int | None = None,
    priority: int = 0,
    run_after: datetime | None = None,
    idempotency_key: str | None = None,
    after: Sequence[Job | UUID | str] | None = None,
    run_if_dependency_fails: bool = False,
    workflow_id: UUID | str | None = None,
    conn: psycopg.AsyncConnection | None = None,
    store: AsyncStore | None = None,
) -> Enqueued:
    """``enqueue``, also telling whether the job is new or an idempotency-key replay."""
    new = prepare(job_type, params, user_id=user_id, priority=priority, run_after=run_after,
                  idempotency_key=idempotency_key, after=after,
                  run_if_dependency_fails=run_if_dependency_fails, workflow_id=workflow_id)
    store = store or await default_store()
    return enqueued(new, await store.insert_job(new, conn=conn))


async def enqueue_many(
    job_type: str,
    params_list: Sequence[dict[str, Any] | None],
    *,
    user_id: int | None = None,
    after: Sequence[Job | UUID | str] | None = None,
    run_if_dependency_fails: bool = False,
    workflow_id: UUID | str | None = None,
    conn: psycopg.AsyncConnection | None = None,
    store: AsyncStore | None = None,
) -> list[Job]:
    """``bgjobs.enqueue_many``, awaited: one statement, the jobs in the order given."""
    batch = prepare_many(job_type, params_list, user_id=user_id, after=after,
                         run_if_dependency_fails=run_if_dependency_fails,
                         workflow_id=workflow_id)
    if batch.one is None and not batch.params_list:
        return []
    store = store or await default_store()
    if batch.one is not None:
        return [enqueued(batch.one, await store.insert_job(batch.one, conn=conn)).job]
    return await store.insert_jobs(batch.job_type, batch.params_list, conn=conn,
                                   **batch.options())


async def get_job(job_id: UUID | str, *, user_id: int | None = None,
                  store: AsyncStore | None = None) -> Job | None:
    """The job, or None if there is none (or, with ``user_id``, it is not that user's)."""
    try:
        return await (store or await default_store()).get_job(parse_job_id(job_id), user_id)
    except NotFound:
        return None


async def get_workflow(workflow_id: UUID | str, *, user_id: int | None = None,
                       store: AsyncStore | None = None) -> Workflow | None:
    """The workflow, or None if it has no jobs (of that user's, with ``user_id``)."""
    try:
        return await (store or await default_store()).get_workflow(parse_job_id(workflow_id),
                                                                   user_id)
    except NotFound:
        return None


async def cancel(job_id: UUID | str, *, user_id: int | None = None,
                 store: AsyncStore | None = None) -> Job:
    """``bgjobs.cancel``, awaited: NotFound (none, or not theirs) or Conflict (finished)."""
    return await (store or await default_store()).cancel(parse_job_id(job_id), user_id)


async def wait(job_id: UUID | str, timeout: float | None = None, *, user_id: int | None = None,
               store: AsyncStore | None = None) -> Job:
    """``bgjobs.wait``, awaited: the job once finished, woken by NOTIFY on a LISTEN connection
    of its own; WaitTimeout, NotFound, DatabaseUnavailable or NoSession as there."""
    job_id = parse_job_id(job_id)
    deadline = deadline_of(timeout)
    store = store or await default_store()
    async with _listening(store) as conn:
        job = await store.get_job(job_id, user_id)  # after LISTEN: nothing falls in between
        while job.status not in FINISHED:
            left = left_of(deadline)
            if left is not None and left <= 0:
                raise WaitTimeout(f"job {job_id} is still {job.status} after {timeout}s", job)
            async for note in conn.notifies(timeout=left, stop_after=1):
                if may_have_finished(note.payload, job_id):
                    job = await store.get_job(job_id, user_id)
    return job


async def wait_workflow(workflow_id: UUID | str, timeout: float | None = None, *,
                        user_id: int | None = None,
                        store: AsyncStore | None = None) -> Workflow:
    """``bgjobs.wait_workflow``, awaited: the workflow once none of its jobs is pending or
    running (re-read when a notification names one of its jobs, and every REREAD_SECONDS)."""
    workflow_id = parse_job_id(workflow_id)
    deadline = deadline_of(timeout)
    store = store or await default_store()
    async with _listening(store) as conn:
        workflow = await store.get_workflow(workflow_id, user_id)
        reread_at = time.monotonic() + REREAD_SECONDS
        while not workflow.finished:
            left = left_of(deadline)
            if left is not None and left <= 0:
                raise WaitTimeout(f"workflow {workflow_id} is not finished after {timeout}s",
                                  None, workflow)
            until = reread_at - time.monotonic()
            ids = {job.id for job in workflow.jobs}
            news = False
            async for note in conn.notifies(timeout=max(0.0, until if left is None
                                                        else min(left, until)),
                                            stop_after=1):
                news = names_any(note.payload, ids)
            if news or time.monotonic() >= reread_at:
                workflow = await store.get_workflow(workflow_id, user_id)
                reread_at = time.monotonic() + REREAD_SECONDS
    return workflow


@asynccontextmanager
async def _listening(store: AsyncStore) -> AsyncIterator[psycopg.AsyncConnection]:
    """A LISTEN connection of its own on background_jobs_progress (as tasks/wait.py's)."""
    url = config_mod.load().direct_url or store.url
    try:
        conn = await channels.alisten(url, (channels.PROGRESS,), channels.WAIT)
        async with conn:
            yield conn
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"lost the database while waiting: {first_line(exc)}") from exc


# One pool per event loop -------------------------------------------------------------------


class _LoopPool:
    """An event loop's store: opening (a task), then open; ``closer`` closes it (see below)."""

    opening: asyncio.Task[AsyncStore]
    guard: asyncio.Task[None] | None = None
    closer: Any = None


_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopPool] = (
    weakref.WeakKeyDictionary())
_settings: tuple[str | None, int | None] = (None, None)


def configure(url: str | None = None, *, pool_max: int | None = None) -> None:
    """Pools opened from now on use this database (default: DATABASE_URL, else the running
    embedded cluster) and size; ``await close()`` first to replace this loop's."""
    global _settings
    if url is not None:
        config_mod.check_database_url("bgjobs.aio.configure(url=...)", url)
    _settings = (url, pool_max)


async def default_store() -> AsyncStore:
    """This event loop's store, its pool opened on first use."""
    loop = asyncio.get_running_loop()
    entry = _pools.get(loop)
    if entry is None:
        entry = _pools[loop] = _LoopPool()
        entry.opening = loop.create_task(_open(loop, entry), name="bgjobs-aio-pool")
    try:
        return await asyncio.shield(entry.opening)
    except BaseException:
        if entry.opening.done() and _pools.get(loop) is entry:
            del _pools[loop]  # it failed (no database): the next call tries again
        raise


async def close() -> None:
    """Close this event loop's pool (a new one opens on the next call that needs it)."""
    entry = _pools.pop(asyncio.get_running_loop(), None)
    if entry is None:
        return
    try:
        await entry.opening
    except Exception:  # noqa: BLE001 - it never opened: nothing to close
        return
    if entry.guard is not None:
        entry.guard.cancel()
        await asyncio.gather(entry.guard, return_exceptions=True)
    if entry.closer is not None:
        await entry.closer.aclose()


async def _open(loop: asyncio.AbstractEventLoop, entry: _LoopPool) -> AsyncStore:
    url, pool_max = _settings
    cfg = config_mod.load()
    pool = make_pool(url or database_url(cfg), max_size=pool_max or cfg.pool_max,
                     name=channels.AIO)
    try:
        # Its first connection made before the first call borrows it: a call that had to wait
        # would make the pool grow, in the background, and a connection cut short by the
        # loop's end is left open until the process exits.
        with translate_errors(pool.breaker.suspect):
            await pool.open(wait=True, timeout=pool.timeout)
    except BaseException:
        await pool.close()
        raise
    store = AsyncStore(pool)
    # asyncio has no "loop closing" hook. asyncio.run (and uvloop's, anyio's runners) first
    # cancel every task, then shut down the loop's async generators, then close it. The pool
    # must close at the first step: a pool worker cancelled while it connects swallows the
    # cancellation and waits for work for ever, and asyncio.run with it. So a task of ours
    # closes the pool when cancelled (its workers are told to stop), and an async generator
    # does it for a loop whose tasks nobody cancels but whose generators are shut down.
    entry.guard = loop.create_task(_close_when_cancelled(loop, entry, store),
                                   name="bgjobs-aio-pool-guard")
    entry.closer = _close_at_shutdown(loop, entry, store)
    await entry.closer.__anext__()
    return store


async def _close_when_cancelled(loop: asyncio.AbstractEventLoop, entry: _LoopPool,
                                store: AsyncStore) -> None:
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        # The pool's close() raises CancelledError when its workers were cancelled with us.
        with suppress(asyncio.CancelledError):
            await _shut(loop, entry, store)


async def _close_at_shutdown(loop: asyncio.AbstractEventLoop, entry: _LoopPool,
                             store: AsyncStore) -> AsyncIterator[None]:
    try:
        yield
    finally:
        await _shut(loop, entry, store)


async def _shut(loop: asyncio.AbstractEventLoop, entry: _LoopPool, store: AsyncStore) -> None:
    """Forget this loop's pool and close it (again: a no-op)."""
    if _pools.get(loop) is entry:
        del _pools[loop]
    pool = store.pool
    # At the loop's end its tasks are cancelled, the pool's workers with them, and the pool's
    # close() then raises CancelledError (it gathers them) before closing its idle
    # connections, which would stay open until the process exits: close those first.
    while not pool.closed and pool.get_stats().get("pool_available"):
        try:
            conn = await pool.getconn(timeout=0.1)
        except Exception:  # noqa: BLE001 - none after all: the pool closes what is left
            break
        await conn.close()  # not given back: the pool would warn that it was closed
    await pool.close()
