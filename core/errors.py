"""bgjobs's exceptions, under one root: ``bgjobs.BgjobsError``, so callers catch one thing.

Driver errors never leave the core layer as they are: they become one of these, with a message
a user can act on. The API and the events service map them to HTTP answers in one place
(bgjobs.server.errors); the CLI prints any of them as one line in one place (bgjobs.cli.main).
The errors of the task layer live here too, so that mapping needs no import of that layer; they
keep the built-in bases callers rely on (``except ValueError`` still catches InvalidParams).
A few module-private errors derive from the root where they are raised (MigrationError,
EmbeddedError, ProxyError, WaitTimeout, the CLI's and the API's own).
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


class InvalidRequest(InvalidInput):
    """A job's priority, run_after or idempotency key is out of bounds; the message says how."""


class ConfigError(BgjobsError, ValueError):
    """An environment variable holds a value bgjobs cannot use; the message names it."""


# Tasks ---------------------------------------------------------------------------------------


class InvalidParams(BgjobsError, ValueError):
    """Params a task does not accept; the message says which and why."""


class BadDeclaration(BgjobsError, ValueError):
    """A ``@task(...)`` bgjobs cannot use (raised as its module is imported); the message says
    which and why. A module in BGJOBS_TASK_MODULES that raises it stops a command in one line."""


class UnknownTask(BgjobsError, LookupError):
    """No task is registered under that name."""


class NonRetryable(BgjobsError):
    """Raise (or subclass) in a handler to end the job in error at once, without retries."""


class JobCancelled(BgjobsError):  # noqa: N818 - reads better at the raise site
    """Raised inside a handler whose job was cancelled or taken back; the worker stops it."""


class InvalidSchedule(BgjobsError, ValueError):
    """A cron expression or time zone bgjobs cannot use; the message says which and why."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (driver errors run to several), or its type."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
