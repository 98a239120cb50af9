"""The events service's database reads, async, through the store's named queries.

The API's Store is synchronous; the events service lives on one event loop and must not block
it, so it reads the same rows with the same SQL over an AsyncConnectionPool.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager, suppress
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from bgjobs.core import channels, replan
from bgjobs.core.db import (
    CONNECT_TIMEOUT,
    IDLE_CHECK_SECONDS,
    Breaker,
    aprepare_if_direct,
    waits,
)
from bgjobs.core.jobs import Job, User
from bgjobs.core.queries import q
from bgjobs.core.rows import job_row, lenient, record_row
from bgjobs.core.store import translate_errors
from bgjobs.server import auth

POOL_APPLICATION_NAME = channels.EVENTS


class AsyncPool(AsyncConnectionPool):
    """The async pool with a Breaker (bgjobs.core.db): known outages are answered at once."""

    def __init__(self, *args: Any, breaker: Breaker, **kwargs: Any) -> None:
        self.breaker = breaker
        super().__init__(*args, **kwargs)

    @asynccontextmanager
    async def lend(self) -> AsyncIterator[psycopg.AsyncConnection]:
        """Like ``connection()``, but DatabaseUnavailable at once while Postgres is down."""
        for wait in waits(self.timeout, self.breaker):
            with suppress(PoolTimeout):
                conn = await self.getconn(timeout=wait)
                break
        else:
            raise PoolTimeout(f"no connection after {self.timeout:.1f}s")
        try:
            async with conn:
                yield conn
        finally:
            await self.putconn(conn)


def make_pool(url: str, max_size: int, timeout: float = 5.0) -> AsyncPool:
    """A lazily opened pool that outlives Postgres restarts (connections are checked)."""
    breaker = Breaker(url, "bgjobs-events", autocommit=True,
                      application_name=POOL_APPLICATION_NAME)

    async def configure(conn: psycopg.AsyncConnection) -> None:
        await aprepare_if_direct(conn)  # the pool may sit behind a pooler in transaction mode
        breaker.succeeded()
        await _mark_used(conn)

    return AsyncPool(
        url,
        breaker=breaker,
        min_size=1,
        max_size=max_size,
        name="bgjobs-events",
        open=False,
        timeout=timeout,
        reconnect_timeout=0,  # give up a failed reconnection and open the breaker
        reconnect_failed=lambda _pool: breaker.failed("cannot connect to Postgres"),
        configure=configure,
        # Check only a connection that sat idle (after a Postgres restart it would fail the
        # read): checking every one cost each row read a second round trip, and on a loop busy
        # sending to a thousand streams every round trip waits for a whole round of sends.
        check=_check_if_idle,
        kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT,
                "application_name": POOL_APPLICATION_NAME, "cursor_factory": replan.AsyncCursor,
                "prepare_threshold": None},
    )


async def _mark_used(conn: psycopg.AsyncConnection) -> None:
    conn._bgjobs_idle_since = time.monotonic()  # type: ignore[attr-defined]


async def _check_if_idle(conn: psycopg.AsyncConnection) -> None:
    if time.monotonic() - getattr(conn, "_bgjobs_idle_since", 0.0) > IDLE_CHECK_SECONDS:
        await AsyncConnectionPool.check_connection(conn)
    await _mark_used(conn)


class EventsDb:
    """Job and session reads for the events service."""

    def __init__(self, pool: AsyncPool) -> None:
        self.pool = pool

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[psycopg.AsyncConnection]:
        with translate_errors(self.pool.breaker.suspect):
            async with self.pool.lend() as conn:
                lenient(conn)  # a stored value no reader can hold never fails a stream
                yield conn

    async def get_job(self, job_id: UUID, user_id: int | None) -> Job | None:
        """The job, if it exists and (with ``user_id``) belongs to that user."""
        async with self._conn() as conn, conn.cursor(row_factory=job_row) as cur:
            await cur.execute(q("get_job"), {"id": job_id, "user_id": user_id})
            return await cur.fetchone()

    async def get_jobs(self, job_ids: Iterable[UUID]) -> list[Job]:
        ids = list(job_ids)
        if not ids:
            return []
        async with self._conn() as conn, conn.cursor(row_factory=job_row) as cur:
            await cur.execute(q("get_jobs"), {"ids": ids})
            return await cur.fetchall()

    async def workflow_summary(self, workflow_id: UUID, user_id: int) -> dict[str, Any] | None:
        """The user's jobs of a workflow counted by state, the first that failed (``failed``)
        and the sum of their versions (``versions``); None if the user has none of it."""
        async with self._conn() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(q("events_workflow_summary"), {"id": workflow_id,
                                                             "user_id": user_id})
            row = await cur.fetchone()
        return row if row and row["total"] else None

    async def workflow_jobs(self, workflow_id: UUID, user_id: int, limit: int) -> list[Job]:
        """The user's jobs of a workflow, oldest first, at most ``limit``."""
        async with self._conn() as conn, conn.cursor(row_factory=job_row) as cur:
            await cur.execute(q("workflow_jobs"), {"id": workflow_id, "user_id": user_id,
                                                   "limit": limit})
            return await cur.fetchall()

    async def workflow_unsent(self, workflow_id: UUID, user_id: int, seen: dict[UUID, int],
                              limit: int) -> list[Job]:
        """The workflow's jobs at a version above ``seen`` (or not in it), at most ``limit``."""
        async with self._conn() as conn, conn.cursor(row_factory=job_row) as cur:
            await cur.execute(q("events_workflow_unsent"), {
                "id": workflow_id, "user_id": user_id, "ids": list(seen),
                "versions": list(seen.values()), "limit": limit})
            return await cur.fetchall()

    async def user_jobs_since(self, user_ids: Iterable[int], since: datetime,
                              limit: int = 1000) -> list[Job]:
        users = list(user_ids)
        if not users:
            return []
        async with self._conn() as conn, conn.cursor(row_factory=job_row) as cur:
            await cur.execute(q("events_user_jobs_since"),
                              {"user_ids": users, "since": since, "limit": limit})
            return await cur.fetchall()

    async def live_credentials(self, token_ids: list[int],
                               session_ids: list[UUID]) -> set[tuple[str, str]]:
        """Which of these tokens and sessions still let their user in: ("token"|"session", id)."""
        async with self._conn() as conn:
            cur = await conn.execute(q("live_credentials"), {"token_ids": token_ids,
                                                            "session_ids": session_ids})
            return {(kind, id_) for kind, id_ in await cur.fetchall()}

    async def authenticate(self, secret: str, authorization: str | None,
                           cookie: str | None) -> User | None:
        """The same rule as ``bgjobs.server.auth.authenticate``, read asynchronously."""
        found = auth.lookup(secret, authorization, cookie)
        return await self._user(*found) if found else None

    async def _user(self, query: str, args: dict[str, object]) -> User | None:
        async with self._conn() as conn, conn.cursor(row_factory=record_row(User)) as cur:
            await cur.execute(q(query), args)
            return await cur.fetchone()
