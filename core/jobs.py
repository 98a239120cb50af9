"""The rows bgjobs reads and writes, as frozen records: jobs, users, attempts and their outcomes."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, fields
from datetime import datetime
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
    run_after: datetime
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

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def to_json(self) -> dict[str, Any]:
        """The job as the API and the events service show it."""
        return {
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


JOB_COLUMNS = tuple(f.name for f in fields(Job))


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
        by_status = {k: v for k, v in self.counts.items() if k not in ("total", "done")}
        return {
            "workflow_id": str(self.id),
            "summary": {"total": self.counts["total"], "done": self.counts["done"],
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


class ProgressUpdate(NamedTuple):
    attempt: Attempt
    progress: dict[str, Any]


class Completion(NamedTuple):
    attempt: Attempt
    result: Any
    #: the handler's last progress if it was never written, else None
    progress: dict[str, Any] | None


class Failure(NamedTuple):
    attempt: Attempt
    error: dict[str, Any]
    retryable: bool
    #: seconds before the retry, when retryable and attempts remain
    delay: float


def parse_job_id(raw: UUID | str) -> UUID:
    """A job id from a URL, a command line or a caller; anything but a UUID names no job."""
    if isinstance(raw, UUID):
        return raw
    try:
        return UUID(raw)
    except (ValueError, TypeError, AttributeError):
        raise NotFound(f"no job {raw!r}: job ids are UUIDs") from None


def unstorable(value: Any) -> str | None:
    """Why Postgres' jsonb cannot hold ``value`` (not JSON, NaN, a NUL character), or None."""
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        return f"is not JSON: {exc}"
    if "\\u0000" in text:
        return "contains a NUL character, which Postgres cannot store"
    return None


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None
