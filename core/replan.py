"""Prepared statements that a migration made stale are prepared again instead of failing.

psycopg prepares a statement on the server after a few runs. A migration that changes what a
prepared ``SELECT * FROM background_jobs`` returns (a new column) makes Postgres refuse to run
it again on that connection, every time, with "cached plan must not change result type": every
long-lived connection of the API, the events service and the workers would fail its reads until
restarted. These cursors (every connection bgjobs makes uses them) make psycopg forget the
connection's prepared statements, drop them on the server (``DEALLOCATE ALL``) and run the
statement again, once. Inside a transaction the error has already aborted it: the
caller gets the error, as for any other, and the statements are dropped before the next one.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus

log = logging.getLogger(__name__)


def is_stale_plan(exc: psycopg.Error) -> bool:
    """Postgres refused a prepared statement whose result type a schema change altered."""
    return (isinstance(exc, psycopg.errors.FeatureNotSupported)
            and exc.diag.source_function == "RevalidateCachedQuery")


def _usable(conn: Any) -> bool:
    """DEALLOCATE can run now: no transaction, or one that has not failed."""
    return conn.info.transaction_status in (TransactionStatus.IDLE, TransactionStatus.INTRANS)


class Cursor(psycopg.Cursor[Any]):
    def execute(self, query: Any, params: Any = None, *, prepare: bool | None = None,
                binary: bool | None = None) -> Any:
        conn = self.connection
        if getattr(conn, "_bgjobs_stale", False) and _usable(conn):
            _forget(conn)
        try:
            return super().execute(query, params, prepare=prepare, binary=binary)
        except psycopg.Error as exc:
            if not is_stale_plan(exc):
                raise
            conn._bgjobs_stale = True  # type: ignore[attr-defined]
            if conn.info.transaction_status != TransactionStatus.IDLE:
                raise
            _forget(conn)
            return super().execute(query, params, prepare=prepare, binary=binary)


class AsyncCursor(psycopg.AsyncCursor[Any]):
    async def execute(self, query: Any, params: Any = None, *, prepare: bool | None = None,
                      binary: bool | None = None) -> Any:
        conn = self.connection
        if getattr(conn, "_bgjobs_stale", False) and _usable(conn):
            await _aforget(conn)
        try:
            return await super().execute(query, params, prepare=prepare, binary=binary)
        except psycopg.Error as exc:
            if not is_stale_plan(exc):
                raise
            conn._bgjobs_stale = True  # type: ignore[attr-defined]
            if conn.info.transaction_status != TransactionStatus.IDLE:
                raise
            await _aforget(conn)
            return await super().execute(query, params, prepare=prepare, binary=binary)


def _forget(conn: Any) -> None:
    log.info("the schema changed: preparing this connection's statements again")
    conn._bgjobs_stale = False
    conn._prepared.clear()  # psycopg's own record of what it prepared (no public API for it)
    psycopg.Cursor(conn).execute("DEALLOCATE ALL", prepare=False)


async def _aforget(conn: Any) -> None:
    log.info("the schema changed: preparing this connection's statements again")
    conn._bgjobs_stale = False
    conn._prepared.clear()
    await psycopg.AsyncCursor(conn).execute("DEALLOCATE ALL", prepare=False)
