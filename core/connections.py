"""The one narrow interface the store takes its connections through, and what every store
does with a connection: lend it, and turn driver errors into bgjobs's exceptions.

A ``ConnectionSource`` lends a connection for the length of a block: core/db.py's Pool (the
API, the CLI, host code) and worker/connection.py's OneConnection (a supervisor's claims and
writes) both are one, and so may a test's double be.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any, Literal, Protocol

import psycopg
from psycopg.rows import AsyncRowFactory, RowFactory, tuple_row
from psycopg_pool import PoolTimeout

from bgjobs.core import replan
from bgjobs.core.db import is_direct, is_outage, mark_used
from bgjobs.core.errors import (
    BgjobsError,
    DatabaseError,
    DatabaseUnavailable,
    InvalidInput,
    NotMigrated,
    UnreadableValue,
    first_line,
)
from bgjobs.core.rows import lenient


class ConnectionSource(Protocol):
    """Where the store's connections come from: a Pool, or a worker's one connection
    (worker/connection.py). The store needs nothing else of it."""

    @property
    def url(self) -> str:
        """Where its connections go (a LISTEN of one's own needs a session there, unless
        BGJOBS_DIRECT_URL says where else)."""
        ...

    def lend(self) -> AbstractContextManager[psycopg.Connection]:
        """An autocommit connection for the length of the block; DatabaseUnavailable (or a
        driver error the store translates) when there is none."""
        ...


def lend(source: ConnectionSource, conn: psycopg.Connection | None = None
         ) -> AbstractContextManager[psycopg.Connection]:
    """The caller's connection if given (their transaction), else one ``source`` lends; driver
    errors in the block come out as bgjobs's exceptions.

    The source's connections read values bgjobs cannot represent as markers (core/rows.py);
    the caller's connection is left as it is (its reads in the stores use lenient cursors).
    """
    return _Lent(source) if conn is None else _Callers(conn)


class _Lent:
    """``lend``'s block over a connection of the source. A class, not a generator: every
    statement of the store goes through one (see translate_errors)."""

    __slots__ = ("source", "lending", "conn")

    def __init__(self, source: ConnectionSource) -> None:
        self.source = source

    def __enter__(self) -> psycopg.Connection:
        lending = self.source.lend()
        try:
            conn = lending.__enter__()
        except BaseException as exc:
            _TRANSLATE.__exit__(type(exc), exc, exc.__traceback__)
            raise
        self.lending, self.conn = lending, conn
        try:
            lenient(conn)
        except BaseException as exc:
            self.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return conn

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
        if exc is None:
            mark_used(self.conn)
        try:
            if self.lending.__exit__(exc_type, exc, tb):
                return True
        except BaseException as raised:
            _TRANSLATE.__exit__(type(raised), raised, raised.__traceback__)
            raise
        return _TRANSLATE.__exit__(exc_type, exc, tb)


class _Callers:
    """``lend``'s block over the caller's own connection (inside their transaction)."""

    __slots__ = ("conn",)

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> psycopg.Connection:
        conn = self.conn
        with _TRANSLATE:
            if conn.prepare_threshold is not None and not hasattr(conn, "_bgjobs_pooled"):
                # Checked once per connection: see prepare_flag.
                conn._bgjobs_pooled = not is_direct(conn)  # type: ignore[attr-defined]
        return conn

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
        return _TRANSLATE.__exit__(exc_type, exc, tb)


def own_cursor(conn: psycopg.Connection, row_factory: RowFactory[Any] = tuple_row
               ) -> psycopg.Cursor[Any]:
    """A cursor for bgjobs's statements on ``conn``, whatever the connection was made with.

    A caller's connection may read dicts (``row_factory=dict_row``): the row factory is
    bgjobs's here. Its cursor class is kept (an app's instrumented cursor sees the statements)
    unless it cannot run them: a ClientCursor binds on the client and reads no binary results,
    a RawCursor takes no named placeholders.
    """
    if issubclass(conn.cursor_factory, (psycopg.ClientCursor, psycopg.RawCursor)):
        return replan.Cursor(conn, row_factory=row_factory)
    return conn.cursor(row_factory=row_factory)


def own_acursor(conn: psycopg.AsyncConnection, row_factory: AsyncRowFactory[Any] = tuple_row
                ) -> psycopg.AsyncCursor[Any]:
    """``own_cursor`` for an async connection."""
    if issubclass(conn.cursor_factory, (psycopg.AsyncClientCursor, psycopg.AsyncRawCursor)):
        return replan.AsyncCursor(conn, row_factory=row_factory)
    return conn.cursor(row_factory=row_factory)


def kept_cursor(conn: psycopg.Connection) -> psycopg.Cursor[Any]:
    """``own_cursor(conn)``, made once per connection and kept on it, for a statement whose one
    row is read at once (a single enqueue). A new cursor per statement starts a new adaptation
    context, whose dumpers and loaders are looked up again: alternated with a plain INSERT on
    the same server, one enqueue went from 0.91x to 0.97x of it with the cursor kept.

    Only on a connection the source lent (one thread holds it): a cursor is not thread-safe,
    and a caller's connection may be shared between threads."""
    cur: psycopg.Cursor[Any] | None = getattr(conn, "_bgjobs_cursor", None)
    if cur is None or cur.closed:
        cur = own_cursor(conn)
        conn._bgjobs_cursor = cur  # type: ignore[attr-defined]
    return cur


def kept_acursor(conn: psycopg.AsyncConnection) -> psycopg.AsyncCursor[Any]:
    """``kept_cursor`` for an async connection."""
    cur: psycopg.AsyncCursor[Any] | None = getattr(conn, "_bgjobs_cursor", None)
    if cur is None or cur.closed:
        cur = own_acursor(conn)
        conn._bgjobs_cursor = cur  # type: ignore[attr-defined]
    return cur


def prepare_flag(conn: psycopg.Connection) -> bool | None:
    """False on a caller's connection that goes through a pooler (its prepared statements
    would outlive the transaction's server connection), else None: the connection decides."""
    return False if getattr(conn, "_bgjobs_pooled", False) else None


class translate_errors:
    """Driver errors as bgjobs's exceptions (also used by the events service's async reads).

    ``suspect`` is called when the database seems gone (a Breaker's, to find out at once).
    A class, not a generator: it wraps every statement bgjobs runs, and a generator's context
    manager cost a single enqueue several microseconds.
    """

    __slots__ = ("suspect",)

    def __init__(self, suspect: Callable[[], None] | None = None) -> None:
        self.suspect = suspect

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> Literal[False]:
        if exc is None:
            return False
        translated = _translated(exc, self.suspect)
        if translated is None:
            return False  # not the driver's: it goes on as it is
        raise translated from exc


#: ``translate_errors`` with no breaker to tell keeps no state: every lend shares this one.
_TRANSLATE = translate_errors()


def _translated(exc: BaseException, suspect: Callable[[], None] | None) -> BgjobsError | None:
    """The bgjobs exception that ``exc`` means, or None when it is none of the driver's."""
    if isinstance(exc, PoolTimeout):
        if suspect:
            suspect()
        return DatabaseUnavailable("no database connection available (is Postgres up?)")
    if isinstance(exc, psycopg.OperationalError):
        if not is_outage(exc):  # Postgres answered: it is up (a protocol error, a timeout)
            return DatabaseError(f"the database refused the statement: {first_line(exc)}")
        if suspect:
            suspect()
        return DatabaseUnavailable(f"database unavailable: {first_line(exc)}")
    if isinstance(exc, psycopg.errors.IdleInTransactionSessionTimeout):
        # Postgres ended the session of a transaction left idle too long (a process frozen
        # inside it: worker/connection.py); the next call reconnects.
        return DatabaseUnavailable(f"the database ended this session: {first_line(exc)}")
    if isinstance(exc, (psycopg.errors.InvalidSqlStatementName,
                        psycopg.errors.DuplicatePreparedStatement)):
        return DatabaseError(f"{first_line(exc)}: prepared statements through a pooler in "
                             "transaction mode? (docs/operations.md, connection poolers)")
    if isinstance(exc, (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedFunction,
                        psycopg.errors.UndefinedColumn)):
        return NotMigrated(f"{first_line(exc)}: this database is not (fully) migrated for this "
                           "version of bgjobs; run `bgjobs migrate`")
    if isinstance(exc, psycopg.errors.ForeignKeyViolation):
        if (exc.diag.constraint_name or "").startswith("background_jobs_depends_on"):
            return InvalidInput(f"after: {first_line(exc)}")
        # The detail names the id and the table it is missing from ("Key (user_id)=(7) is not
        # present in table "users"."): which users table jobs belong to (docs/dba.md).
        return InvalidInput(f"no such user: {exc.diag.message_detail or first_line(exc)}")
    if isinstance(exc, psycopg.DataError):
        if exc.sqlstate is None:
            # Raised by psycopg loading a result, not by Postgres: a stored value this process
            # cannot represent. Not the caller's input, and nothing was refused.
            return UnreadableValue(f"a stored value cannot be read: {first_line(exc)} (see "
                                   "docs/dba.md, 'Values bgjobs cannot read')")
        # A value Postgres refuses to store (out of range, a NUL in JSON text): the caller's
        # input, and the statement changed nothing.
        return InvalidInput(f"the database rejected a value: {first_line(exc)}")
    return None
