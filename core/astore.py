"""The jobs store on an event loop: what ``bgjobs.aio`` needs of core/store_jobs.py's JobStore,
asynchronously (the same subject; the attempts, users and operations stores have no async twin).

The same named queries with the same arguments, and the same meaning given to their answers:
the pure helpers of core/store_jobs.py build the one and read the other. Only the I/O is here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any
from uuid import UUID

import psycopg

from bgjobs.core.apool import AsyncPool
from bgjobs.core.connections import kept_acursor, own_acursor, translate_errors
from bgjobs.core.errors import NotFound
from bgjobs.core.jobs import Job, Workflow
from bgjobs.core.queries import q
from bgjobs.core.rows import dict_rows, job_row, lenient
from bgjobs.core.store_jobs import (
    WORKFLOW_JOBS_MAX,
    Inserted,
    NewJob,
    _pending_job,
    clashed,
    insert_job_args,
    insert_jobs_args,
    inserted_jobs,
    not_cancelled,
    workflow_of,
)


class AsyncStore:
    """Enqueue, read and cancel jobs over an AsyncPool (or the caller's AsyncConnection)."""

    def __init__(self, pool: AsyncPool) -> None:
        self.pool = pool

    @property
    def url(self) -> str:
        """Where the store's connections go (as ``Store.url``)."""
        return self.pool.url

    @asynccontextmanager
    async def connection(self, conn: psycopg.AsyncConnection | None = None
                         ) -> AsyncIterator[psycopg.AsyncConnection]:
        """The caller's connection if given (their transaction), else one from the pool."""
        if conn is not None:
            with translate_errors():
                if conn.prepare_threshold is not None and not hasattr(conn, "_bgjobs_pooled"):
                    conn._bgjobs_pooled = not await _is_direct(conn)  # type: ignore[attr-defined]
                yield conn
            return
        with translate_errors(self.pool.breaker.suspect):
            async with self.pool.lend() as pooled:
                lenient(pooled)
                yield pooled

    async def insert_job(self, new: NewJob, *,
                         conn: psycopg.AsyncConnection | None = None) -> Inserted:
        """``JobStore.insert_job``: one statement, then the clashing row only if it made none."""
        args = insert_job_args(new)
        clash: dict[str, Any] | None = None
        async with self.connection(conn) as c:
            insert = kept_acursor(c) if conn is None else own_acursor(c)  # see JobStore
            for _ in range(2):  # a clash committed after the first statement began: see JobStore
                row = await (await insert.execute(q("insert_job"), args, prepare=_prepare(c),
                                                  binary=True)).fetchone()
                if row is not None:
                    return Inserted(_pending_job(new, *row), True)
                async with own_acursor(c, dict_rows) as cur:
                    lenient(cur)
                    await cur.execute(q("find_clashing_job"), args, prepare=_prepare(c))
                    clash = await cur.fetchone()
                if clash is not None:
                    break
        return clashed(new, clash)

    async def insert_jobs(self, job_type: str, params_list: Sequence[dict[str, Any]], *,
                          user_id: int | None = None, max_attempts: int = 3,
                          depends_on: Sequence[UUID] | None = None,
                          run_if_dependency_fails: bool = False,
                          workflow_id: UUID | None = None,
                          conn: psycopg.AsyncConnection | None = None) -> list[Job]:
        """``JobStore.insert_jobs``: many jobs of one type in one statement, in the order given."""
        if not params_list:
            return []
        args = insert_jobs_args(job_type, params_list, user_id, max_attempts, depends_on,
                                run_if_dependency_fails, workflow_id)
        async with self.connection(conn) as c:
            row = await (await own_acursor(c).execute(q("insert_jobs"), args,
                                                       prepare=_prepare(c))).fetchone()
        return inserted_jobs(job_type, params_list, user_id, max_attempts, depends_on,
                             run_if_dependency_fails, row)

    async def get_job(self, job_id: UUID, user_id: int | None = None) -> Job:
        async with self.connection() as c, c.cursor(row_factory=job_row) as cur:
            await cur.execute(q("get_job"), {"id": job_id, "user_id": user_id})
            job = await cur.fetchone()
        if job is None:
            raise NotFound(f"no job {job_id}")
        return job

    async def list_jobs(self, *, user_id: int | None = None, status: str | None = None,
                        job_type: str | None = None, limit: int = 50,
                        before: tuple[Any, UUID] | None = None) -> list[Job]:
        """``JobStore.list_jobs``: newest first, ``before`` the previous page's last position."""
        args = {"user_id": user_id, "status": status, "job_type": job_type, "limit": limit,
                "before_created": before[0] if before else None,
                "before_id": before[1] if before else None}
        async with self.connection() as c, c.cursor(row_factory=job_row) as cur:
            await cur.execute(q("list_jobs"), args)
            return await cur.fetchall()

    async def get_workflow(self, workflow_id: UUID, user_id: int | None = None,
                           limit: int = WORKFLOW_JOBS_MAX) -> Workflow:
        args = {"id": workflow_id, "user_id": user_id, "limit": limit + 1}
        async with self.connection() as c:
            async with c.cursor(row_factory=dict_rows) as cur:
                await cur.execute(q("workflow_summary"), args)
                counts = await cur.fetchone()
            async with c.cursor(row_factory=job_row) as jobs_cur:
                await jobs_cur.execute(q("workflow_jobs"), args)
                jobs = await jobs_cur.fetchall()
        return workflow_of(workflow_id, counts, jobs, limit)

    async def cancel(self, job_id: UUID, user_id: int | None = None) -> Job:
        async with self.connection() as c:
            async with c.cursor(row_factory=job_row) as cur:
                await cur.execute(q("cancel_job"), {"id": job_id, "user_id": user_id})
                job = await cur.fetchone()
            if job is not None:
                return job
            owner = await (await c.execute(q("job_owner"), {"id": job_id})).fetchone()
        raise not_cancelled(job_id, user_id, owner)


async def _is_direct(conn: psycopg.AsyncConnection) -> bool:
    """``core.db.is_direct`` for an async connection."""
    row = await (await own_acursor(conn).execute("SELECT pg_backend_pid()",
                                                 prepare=False)).fetchone()
    return row is not None and row[0] == conn.info.backend_pid


def _prepare(conn: psycopg.AsyncConnection) -> bool | None:
    """False on a caller's connection through a pooler (see core/connections.py's
    ``prepare_flag``)."""
    return False if getattr(conn, "_bgjobs_pooled", False) else None
