"""The job store: every SQL statement bgjobs runs goes through here.

Used by the API, the events service (through the same queries, async) and the workers.
Driver errors become the few exceptions below; writes a worker makes about a running job are
fenced on (status, worker_id, attempts) and report the jobs they no longer own.
"""

from __future__ import annotations

import enum
import hashlib
import secrets
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any, NewType
from uuid import UUID

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.rows import class_row, dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool, PoolTimeout

from server.db import DatabaseUnavailable
from server.queries import q

JobId = NewType("JobId", UUID)
UserId = NewType("UserId", int)


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


class StoreError(Exception):
    """Base of the store's errors."""


class NotFound(StoreError):
    """No such job (or not the caller's)."""


class Conflict(StoreError):
    """The request clashes with the job's current state or another job."""

    def __init__(self, message: str, job_id: UUID | None = None) -> None:
        super().__init__(message)
        self.job_id = job_id


class InvalidInput(StoreError):
    """The database rejected a value (bad name, out-of-range number, ...)."""


@dataclass(frozen=True)
class Job:
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
        }


JOB_COLUMNS = tuple(f.name for f in fields(Job))


@dataclass(frozen=True)
class User:
    id: int
    name: str
    created_at: datetime
    token_id: int | None = None


@dataclass(frozen=True)
class Attempt:
    """One claimed attempt of a job: what fences a worker's writes."""

    job_id: UUID
    worker_id: str
    attempt: int


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class Store:
    """All job, user and token operations, over a psycopg connection pool."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    @contextmanager
    def connection(self, conn: psycopg.Connection | None = None) -> Iterator[psycopg.Connection]:
        """The caller's connection if given (their transaction), else one from the pool."""
        if conn is not None:
            with translate_errors():
                yield conn
            return
        with translate_errors(), self.pool.connection() as pooled:
            yield pooled

    # Jobs ----------------------------------------------------------------------------------

    def create_job(
        self,
        job_type: str,
        params: dict[str, Any] | None = None,
        *,
        user_id: int | None = None,
        priority: int = 0,
        run_after: datetime | None = None,
        max_attempts: int = 3,
        idempotency_key: str | None = None,
        exclusive: bool = False,
        conn: psycopg.Connection | None = None,
    ) -> tuple[Job, bool]:
        """Enqueue a job; returns (job, created). ``conn`` enqueues inside the caller's transaction.

        An idempotency-key replay returns the earlier job with created=False. An exclusive type
        with a job already pending or running for the user raises Conflict with that job's id.
        """
        args = {
            "job_type": job_type, "user_id": user_id, "params": Jsonb(params or {}),
            "priority": priority, "run_after": run_after, "max_attempts": max_attempts,
            "idempotency_key": idempotency_key,
            "exclusive_key": job_type if exclusive else None,
        }
        with self.connection(conn) as c:
            if not c.autocommit and c.info.transaction_status == TransactionStatus.IDLE:
                # Open the caller's transaction first: c.transaction() on an idle connection
                # would BEGIN and COMMIT on its own instead of making a savepoint in theirs.
                c.execute("SELECT 1")
            try:
                with c.transaction(), c.cursor(row_factory=class_row(Job)) as cur:
                    row = cur.execute(q("insert_job"), args).fetchone()
                    if row is not None:
                        return row, True
                    existing = cur.execute(q("get_job_by_idempotency_key"), args).fetchone()
                    if existing is None:  # pragma: no cover - the conflicting row was deleted
                        raise Conflict("idempotency key in use by a job that vanished; retry")
                    return existing, False
            except psycopg.errors.UniqueViolation as exc:
                if exc.diag.constraint_name != "idx_jobs_exclusive":
                    raise
                with c.cursor(row_factory=class_row(Job)) as cur:
                    active = cur.execute(q("get_active_exclusive"), args).fetchone()
                raise Conflict(
                    f"a {job_type} job is already pending or running for this user",
                    active.id if active else None,
                ) from exc

    def get_job(self, job_id: UUID, user_id: int | None = None) -> Job:
        with self.connection() as c, c.cursor(row_factory=class_row(Job)) as cur:
            job = cur.execute(q("get_job"), {"id": job_id, "user_id": user_id}).fetchone()
        if job is None:
            raise NotFound(f"no job {job_id}")
        return job

    def get_jobs(self, job_ids: Iterable[UUID]) -> list[Job]:
        with self.connection() as c, c.cursor(row_factory=class_row(Job)) as cur:
            return cur.execute(q("get_jobs"), {"ids": list(job_ids)}).fetchall()

    def list_jobs(
        self,
        *,
        user_id: int | None = None,
        status: str | None = None,
        job_type: str | None = None,
        limit: int = 50,
        before: tuple[datetime, UUID] | None = None,
    ) -> list[Job]:
        """Newest first; ``before`` is the (created_at, id) of the last job of the previous page."""
        args = {
            "user_id": user_id, "status": status, "job_type": job_type, "limit": limit,
            "before_created": before[0] if before else None,
            "before_id": before[1] if before else None,
        }
        with self.connection() as c, c.cursor(row_factory=class_row(Job)) as cur:
            return cur.execute(q("list_jobs"), args).fetchall()

    def cancel(self, job_id: UUID, user_id: int | None = None) -> Job:
        """Cancel a pending or running job; NotFound if missing or not theirs, Conflict if done."""
        with self.connection() as c, c.cursor(row_factory=class_row(Job)) as cur:
            job = cur.execute(q("cancel_job"), {"id": job_id, "user_id": user_id}).fetchone()
            if job is not None:
                return job
            owner = c.execute(q("job_owner"), {"id": job_id}).fetchone()
        if owner is None or (user_id is not None and owner[0] != user_id):
            raise NotFound(f"no job {job_id}")
        raise Conflict(f"job {job_id} has already finished", job_id)

    def requeue(self, job_id: UUID) -> Job:
        with self.connection() as c, c.cursor(row_factory=class_row(Job)) as cur:
            job = cur.execute(q("requeue_job"), {"id": job_id}).fetchone()
            if job is not None:
                return job
            exists = c.execute(q("job_owner"), {"id": job_id}).fetchone()
        if exists is None:
            raise NotFound(f"no job {job_id}")
        raise Conflict(f"job {job_id} is already pending", job_id)

    # Worker side ---------------------------------------------------------------------------

    def claim(
        self,
        worker_id: str,
        types: Sequence[str],
        *,
        limit: int = 1,
        lease_seconds: int = 30,
        now: datetime | None = None,
    ) -> list[Job]:
        """Claim like ``claim_specs`` (the same statement), returning whole rows, best first."""
        specs = self.claim_specs(worker_id, types, limit=limit, lease_seconds=lease_seconds,
                                 now=now)
        if not specs:
            return []
        by_id = {job.id: job for job in self.get_jobs(spec[0] for spec in specs)}
        return [by_id[spec[0]] for spec in specs if spec[0] in by_id]

    def claim_specs(
        self,
        worker_id: str,
        types: Sequence[str],
        *,
        limit: int = 1,
        lease_seconds: int = 30,
        now: datetime | None = None,
    ) -> list[tuple[UUID, str, dict[str, Any], int, int, int]]:
        """Claim up to ``limit`` due jobs of ``types`` in one statement, best first.

        Rows are (id, job_type, params, attempts, max_attempts, version): at thousands of jobs
        a second, parsing whole rows (timestamps, progress) costs the worker more than running
        them.
        """
        args = {"worker_id": worker_id, "types": list(types), "limit": limit,
                "lease_seconds": lease_seconds, "now": now}
        with self.connection() as c:
            return c.execute(q("claim_jobs"), args).fetchall()

    def next_run_after(self, types: Sequence[str]) -> datetime | None:
        with self.connection() as c:
            row = c.execute(q("next_run_after"), {"types": list(types)}).fetchone()
        return row[0] if row else None

    def heartbeat(self, attempts: Sequence[Attempt]) -> set[UUID]:
        """Refresh heartbeats; returns the job ids still owned (the rest were lost)."""
        return self._fenced("heartbeat_jobs", attempts, {})

    def report_progress(self, updates: Sequence[tuple[Attempt, dict[str, Any]]]) -> set[UUID]:
        """Write progress for many attempts at once; returns the job ids still owned."""
        return self._fenced("progress_jobs", [a for a, _ in updates],
                            {"progress": [Jsonb(p) for _, p in updates]})

    def complete(
        self, done: Sequence[tuple[Attempt, Any, dict[str, Any] | None]]
    ) -> set[UUID]:
        """Finish attempts as complete with (attempt, result, final progress or None)."""
        return self._fenced("complete_jobs", [a for a, _, _ in done], {
            "results": [Jsonb(r) for _, r, _ in done],
            "progress": [Jsonb(p) if p is not None else None for _, _, p in done],
        })

    def fail(
        self, failed: Sequence[tuple[Attempt, dict[str, Any], bool, float]]
    ) -> dict[UUID, str]:
        """End attempts with (attempt, error, retryable, delay s); returns {id: new status}."""
        attempts = [a for a, _, _, _ in failed]
        args = {
            **_attempt_arrays(attempts),
            "errors": [Jsonb(e) for _, e, _, _ in failed],
            "retryable": [r for _, _, r, _ in failed],
            "delays": [float(d) for _, _, _, d in failed],
        }
        if not attempts:
            return {}
        with self.connection() as c:
            return {row[0]: row[1] for row in c.execute(q("fail_jobs"), args)}

    def release(self, attempts: Sequence[Attempt]) -> set[UUID]:
        """Hand attempts back to pending without spending an attempt (graceful shutdown)."""
        return self._fenced("release_jobs", attempts, {})

    def reap_stale(self, now: datetime | None = None) -> list[dict[str, Any]]:
        """Take back jobs whose heartbeat is older than their lease (one reaper at a time)."""
        with self.connection() as c, c.transaction(), c.cursor(row_factory=dict_row) as cur:
            return cur.execute(q("reap_stale"), {"now": now}).fetchall()

    def purge(self, older_than: timedelta, now: datetime | None = None) -> int:
        with self.connection() as c:
            row = c.execute(q("purge_finished"), {"older_than": older_than, "now": now}).fetchone()
        return int(row[0]) if row else 0

    def summary(self) -> list[dict[str, Any]]:
        with self.connection() as c, c.cursor(row_factory=dict_row) as cur:
            return cur.execute(q("summary")).fetchall()

    def _fenced(self, query: str, attempts: Sequence[Attempt], extra: dict[str, Any]) -> set[UUID]:
        if not attempts:
            return set()
        with self.connection() as c:
            rows = c.execute(q(query), {**_attempt_arrays(attempts), **extra}).fetchall()
        return {row[0] for row in rows}

    # Users and tokens ------------------------------------------------------------------------

    def create_user(self, name: str) -> tuple[User, str]:
        """A new user and their first API token (returned in clear, stored hashed)."""
        token = "bgj_" + secrets.token_urlsafe(32)
        with self.connection() as c, c.transaction(), c.cursor(row_factory=class_row(User)) as cur:
            try:
                user = cur.execute(q("insert_user"), {"name": name}).fetchone()
            except psycopg.errors.UniqueViolation as exc:
                raise Conflict(f"user {name!r} already exists") from exc
            except psycopg.errors.CheckViolation as exc:
                raise InvalidInput(
                    f"bad user name {name!r}: use 1-64 letters, digits, or . _ @ -") from exc
            assert user is not None
            c.execute(q("insert_token"), {"user_id": user.id, "token_hash": hash_token(token)})
        return user, token

    def create_token(self, name: str) -> tuple[User, str]:
        """Another API token for an existing user."""
        token = "bgj_" + secrets.token_urlsafe(32)
        with self.connection() as c, c.transaction(), c.cursor(row_factory=class_row(User)) as cur:
            user = cur.execute(q("get_user_by_name"), {"name": name}).fetchone()
            if user is None:
                raise NotFound(f"no user {name!r}")
            c.execute(q("insert_token"), {"user_id": user.id, "token_hash": hash_token(token)})
        return user, token

    def get_user(self, name: str) -> User:
        with self.connection() as c, c.cursor(row_factory=class_row(User)) as cur:
            user = cur.execute(q("get_user_by_name"), {"name": name}).fetchone()
        if user is None:
            raise NotFound(f"no user {name!r}")
        return user

    def find_user(self, query: str, args: dict[str, Any]) -> User | None:
        """Run one of the named user lookups (see ``server.auth.lookup``)."""
        with self.connection() as c, c.cursor(row_factory=class_row(User)) as cur:
            return cur.execute(q(query), args).fetchone()

    def user_for_token(self, token: str) -> User | None:
        return self.find_user("user_for_token", {"token_hash": hash_token(token)})

    def user_for_session(self, user_id: int, token_id: int) -> User | None:
        """The user behind a session cookie, if the token it was made from is still live."""
        return self.find_user("token_is_live", {"user_id": user_id, "token_id": token_id})

    def revoke_tokens(self, name: str) -> int:
        user = self.get_user(name)
        with self.connection() as c:
            return len(c.execute(q("revoke_tokens"), {"user_id": user.id}).fetchall())

    # API -------------------------------------------------------------------------------------

    def ping(self) -> None:
        """Raise DatabaseUnavailable unless a pooled connection answers (health checks)."""
        with self.connection() as c:
            c.execute(q("ping")).fetchone()

    def finished_recently(self, seconds: int) -> list[dict[str, Any]]:
        """Jobs that finished in the last ``seconds``, by type and status, with run times."""
        with self.connection() as c, c.cursor(row_factory=dict_row) as cur:
            return cur.execute(q("finished_recently"), {"seconds": seconds}).fetchall()


def _attempt_arrays(attempts: Sequence[Attempt]) -> dict[str, list[Any]]:
    return {
        "ids": [a.job_id for a in attempts],
        "worker_ids": [a.worker_id for a in attempts],
        "attempts": [a.attempt for a in attempts],
    }


@contextmanager
def translate_errors() -> Iterator[None]:
    """Driver errors as the store's exceptions (also used by the events service's async reads)."""
    try:
        yield
    except PoolTimeout as exc:
        raise DatabaseUnavailable("no database connection available (is Postgres up?)") from exc
    except psycopg.OperationalError as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DatabaseUnavailable(f"database unavailable: {first}") from exc
    except psycopg.errors.NumericValueOutOfRange as exc:
        raise InvalidInput(str(exc).splitlines()[0]) from exc
