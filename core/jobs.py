"""The rows bgjobs reads and writes, as frozen records: jobs, users, attempts and their outcomes."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any, NamedTuple
from uuid import UUID

from bgjobs.core.errors import NotFound


class Status(enum.StrEnum):
    """Mirrors the CHECK on background_jobs.status."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETE = "complete"
    ERROR = "error"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in FINISHED


FINISHED = frozenset({Status.COMPLETE, Status.ERROR, Status.CANCELLED})


@dataclass(frozen=True)
class Job:
    """One row of background_jobs."""

    id: UUID
    user_id: int | None
    job_type: str
    status: str
    progress: dict[str, Any] | None
    result: Any
    created_at: datetime | None
    updated_at: datetime | None
    params: dict[str, Any]
    priority: int
    run_after: datetime | None
    attempts: int
    max_attempts: int
    lease_seconds: int
    worker_id: str | None
    heartbeat_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    version: int
    idempotency_key: str | None
    exclusive_key: str | None
    #: Workflows (docs/workflows.md): the jobs this one runs after, how many of them have not
    #: completed yet, whether it runs even if one fails, and the workflow it belongs to.
    depends_on: list[UUID] | None = None
    waiting_for: int = 0
    run_if_dependency_fails: bool = False
    workflow_id: UUID | None = None
    #: (column, stored value as Postgres printed it) of each value bgjobs could not read (a
    #: row written before the table refused such values): shown as null, see core/rows.py.
    unreadable: tuple[tuple[str, str], ...] = ()

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def to_json(self) -> dict[str, Any]:
        """The job as the API and the events service show it; ``unreadable`` names the fields
        shown as null because the stored value cannot be read (only when there are some)."""
        shown = {
            "id": str(self.id),
            "type": self.job_type,
            "status": self.status,
            "progress": self.progress or {},
            "result": self.result,
            "params": self.params,
            "priority": self.priority,
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "user_id": self.user_id,
            "version": self.version,
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
            "run_after": _iso(self.run_after),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "depends_on": [str(d) for d in self.depends_on] if self.depends_on else [],
            "waiting_for": self.waiting_for,
            "workflow_id": str(self.workflow_id) if self.workflow_id else None,
        }
        if self.unreadable:
            shown["unreadable"] = [name for name, _ in self.unreadable]
        return shown


#: The columns of background_jobs a Job holds (``unreadable`` is not one).
JOB_COLUMNS = tuple(f.name for f in fields(Job) if f.name != "unreadable")


@dataclass(frozen=True)
class Workflow:
    """A workflow: its jobs counted by state, the first that failed, and its jobs."""

    id: UUID
    counts: dict[str, int]
    failed: UUID | None
    jobs: list[Job]
    #: more jobs than ``jobs`` holds (the counts cover them all)
    truncated: bool = False

    @property
    def finished(self) -> bool:
        return self.counts["waiting"] + self.counts["pending"] + self.counts["running"] == 0

    def to_json(self) -> dict[str, Any]:
        by_status = {k: v for k, v in self.counts.items() if k != "total"}
        return {
            "workflow_id": str(self.id),
            "summary": {"total": self.counts["total"], "done": self.counts["complete"],
                        "finished": self.finished, "by_status": by_status,
                        "failed": str(self.failed) if self.failed else None},
            "jobs": [j.to_json() for j in self.jobs],
            "jobs_truncated": self.truncated,
        }


@dataclass(frozen=True)
class User:
    """A bgjobs user (stand-alone API and dashboard); ``token_id`` when found by a token or a
    session, ``session_id`` when found by a session."""

    id: int
    name: str
    created_at: datetime
    token_id: int | None = None
    #: Sees and steers every user's jobs (the operator view).
    is_admin: bool = False
    session_id: UUID | None = None


@dataclass(frozen=True)
class Attempt:
    """One claimed attempt of a job: what fences a worker's writes."""

    job_id: UUID
    worker_id: str
    attempt: int


class Claimed(NamedTuple):
    """What a worker needs to run a claimed job (the claim returns only these columns)."""

    id: UUID
    job_type: str
    params: dict[str, Any]
    attempt: int
    max_attempts: int
    version: int
    #: results of the jobs it waited for, by id (None when it waited for none)
    dependencies: dict[str, Any] | None = None


# The outcomes of an attempt: one type per state change, made where it happens (the worker
# child for a completion or a failure, the supervisor for a release) and written as it is by
# the store, fenced on the attempt (zero rows: someone else decided first). Tuples of the
# leading fields serve too.


class ProgressUpdate(NamedTuple):
    """A running attempt's latest progress."""

    attempt: Attempt
    progress: dict[str, Any]


class Completion(NamedTuple):
    """An attempt whose handler returned: complete, with its result."""

    attempt: Attempt
    result: Any
    #: the handler's last progress if it was never written, else None
    progress: dict[str, Any] | None
    #: seconds the handler ran (for the log)
    duration: float = 0.0

    @property
    def job_id(self) -> UUID:
        return self.attempt.job_id


class Failure(NamedTuple):
    """An attempt whose handler raised (or whose process died): retried while allowed."""

    attempt: Attempt
    error: dict[str, Any]
    retryable: bool
    #: seconds before the retry, when retryable and attempts remain
    delay: float
    traceback: str = ""
    #: seconds the handler ran (for the log)
    duration: float = 0.0
    #: the handler's last progress if it was never written, else None (written first)
    progress: dict[str, Any] | None = None

    @property
    def job_id(self) -> UUID:
        return self.attempt.job_id


class Release(NamedTuple):
    """An attempt handed back to pending without spending it (shutdown, a killed process)."""

    attempt: Attempt
    why: str


def parse_job_id(raw: UUID | str) -> UUID:
    """A job id from a URL, a command line or a caller; anything but a UUID names no job."""
    if isinstance(raw, UUID):
        return raw
    try:
        return UUID(raw)
    except (ValueError, TypeError, AttributeError):
        raise NotFound(f"no job {raw!r}: job ids are UUIDs") from None


#: What every timestamp column of bgjobs's tables accepts, ``TIME_MIN <= t < TIME_MAX``
#: (012_readable_times.sql): Python's datetime, years 1 to 9999, less a day at each end so that
#: every reader converts it to its own time zone. Park a job with ``run_after = PARKED``.
TIME_MIN = datetime(1, 1, 2, tzinfo=UTC)
TIME_MAX = datetime(9999, 12, 31, tzinfo=UTC)
PARKED = datetime(9999, 12, 30, tzinfo=UTC)
TIME_RANGE = "between 0001-01-02T00:00:00Z and 9999-12-30T23:59:59Z"


def time_out_of_range(name: str, value: datetime) -> str | None:
    """Why a column cannot take the aware datetime ``value``, or None."""
    try:
        in_range = TIME_MIN <= value < TIME_MAX
    except OverflowError:  # its UTC falls outside datetime's range itself
        in_range = False
    if in_range:
        return None
    return (f"{name} must be {TIME_RANGE} (the times every reader can represent; to park a "
            f"job, use {PARKED.isoformat()}), got {value.isoformat()}")


#: json.dumps with arguments builds an encoder per call: a third of an enqueue's checks.
_JSONB_ENCODER = json.JSONEncoder(allow_nan=False, separators=(",", ":"))


def jsonb_text(value: Any) -> str:
    """``value`` as the JSON text Postgres' jsonb will store; ValueError says why it cannot
    (not JSON, NaN, a NUL character). The enqueue path sends this text, encoded once."""
    try:
        text = _JSONB_ENCODER.encode(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"is not JSON: {exc}") from None
    if "\\u0000" in text:
        raise ValueError("contains a NUL character, which Postgres cannot store")
    return text


def unstorable(value: Any) -> str | None:
    """Why Postgres' jsonb cannot hold ``value`` (not JSON, NaN, a NUL character), or None."""
    try:
        jsonb_text(value)
    except ValueError as exc:
        return str(exc)
    return None


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None
