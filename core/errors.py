"""bgjobs's few exceptions: what the store, the enqueue path and the services raise.

Driver errors never leave the core layer as they are: they become one of these, with a message
a user can act on. The API and the events service map them to HTTP answers in one place
(bgjobs.server.errors), the CLI prints their message on one line.
"""

from __future__ import annotations


class BgjobsError(Exception):
    """Base of every error bgjobs raises on purpose."""


class DatabaseUnavailable(BgjobsError):
    """Postgres cannot be reached (down, refused, restarting, pool exhausted)."""


class DatabaseError(BgjobsError):
    """Postgres (or a pooler in front of it) refused a statement for a reason that is neither
    an outage nor the caller's input: a protocol error, a cancelled query, a bug. Never
    reported as unavailable, so a 503 always means the database is down."""


class NoSession(BgjobsError):
    """A connection that needs a session of its own (a LISTEN, migrate's lock) reached a pooler
    in transaction mode; the message names the setting that fixes it (BGJOBS_DIRECT_URL)."""


class NotMigrated(DatabaseUnavailable):
    """The database answers but lacks bgjobs's tables or functions: `bgjobs migrate` was not run
    on it (or not since an upgrade). Served as unavailable, as an outage is."""


class StoreError(BgjobsError):
    """Base of the store's errors about jobs, users and tokens."""


class NotFound(StoreError):
    """No such job (or not the caller's)."""


class Conflict(StoreError):
    """The request clashes with the job's current state or another job."""

    def __init__(self, message: str, job_id: object | None = None) -> None:
        super().__init__(message)
        self.job_id = job_id


class UnreadableValue(StoreError):
    """A stored value cannot be represented by this reader (a row written before the tables
    refused such values): a problem of the data, not of the request."""


class InvalidInput(StoreError):
    """The database rejected a value (bad name, out-of-range number, ...)."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (driver errors run to several), or its type."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
