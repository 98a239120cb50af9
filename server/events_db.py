"""The events service's database reads, async, through the store's named queries.

The API's Store is synchronous; the events service lives on one event loop and must not block
it, so it reads the same rows with the same SQL over an AsyncConnectionPool (core/apool.py,
shared with bgjobs.aio).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import dict_row

from bgjobs.core import channels
from bgjobs.core.apool import AsyncPool
from bgjobs.core.apool import make_pool as make_pool
from bgjobs.core.connections import translate_errors
from bgjobs.core.jobs import Job, User
from bgjobs.core.queries import q
from bgjobs.core.rows import job_row, lenient, record_row
from bgjobs.server import auth

POOL_APPLICATION_NAME = channels.EVENTS


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
            await cur.execute(q("workflow_summary"), {"id": workflow_id, "user_id": user_id})
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
