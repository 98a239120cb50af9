"""The job store: every SQL statement bgjobs runs goes through here.

Used by the enqueue path, the API, the CLI and the workers (the events service runs the same
named queries, async). Driver errors become the exceptions of bgjobs.core.errors; writes a
worker makes about a running job are fenced on (status, worker_id, attempts) and report the
jobs they no longer own.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, NamedTuple
from uuid import UUID

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import PoolTimeout

from bgjobs.core.connections import ConnectionSource
from bgjobs.core.db import is_direct, is_outage, mark_used
from bgjobs.core.errors import (
    BgjobsError,
    Conflict,
    DatabaseError,
    DatabaseUnavailable,
    InvalidInput,
    NotFound,
    NotMigrated,
    UnreadableValue,
    first_line,
)
from bgjobs.core.jobs import (
    JOB_COLUMNS,
    Attempt,
    Claimed,
    Completion,
    Failure,
    Job,
    ProgressUpdate,
    User,
    Workflow,
)
from bgjobs.core.queries import q
from bgjobs.core.rows import Unreadable, dict_rows, job_row, lenient, readable, record_row
from bgjobs.core.store_ops import Operations

#: A workflow's jobs listed at most (its counts cover them all).
WORKFLOW_JOBS_MAX = 1000

log = logging.getLogger(__name__)


class NewJob(NamedTuple):
    """A job to insert, as the enqueue path has checked it."""

    job_type: str
    params: dict[str, Any]
    user_id: int | None = None
    priority: int = 0
    run_after: datetime | None = None
    max_attempts: int = 3
    idempotency_key: str | None = None
    exclusive: bool = False
    #: Workflows: run after these jobs (docs/workflows.md).
    depends_on: Sequence[UUID] | None = None
    run_if_dependency_fails: bool = False
    workflow_id: UUID | None = None
    #: ``params`` as JSON text when the caller already encoded it (the enqueue path checks
    #: params by encoding them; sending that text saves encoding them again)
    params_json: str | None = None


class Inserted(NamedTuple):
    """The job an insert made, or on an idempotency-key replay the earlier one (created False)."""

    job: Job
    created: bool


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class Store(Operations):
    """All job, user and token operations, over a ConnectionSource (a pool, or a worker's one
    connection).

    Periodic jobs, limits, retention, workers and the operator view: ``Operations``.
    """

    def __init__(self, pool: ConnectionSource) -> None:
        #: Where connections come from (named ``pool`` for the common case).
        self.pool = pool

    @property
    def url(self) -> str:
        """Where the store's connections go (``ConnectionSource.url``)."""
        return self.pool.url

    @contextmanager
    def connection(self, conn: psycopg.Connection | None = None) -> Iterator[psycopg.Connection]:
        """The caller's connection if given (their transaction), else one lent by the source.

        The source's connections read values bgjobs cannot represent as markers
        (core/rows.py); the caller's connection is left as it is (its reads here use lenient
        cursors).
        """
        if conn is not None:
            with translate_errors():
                if conn.prepare_threshold is not None and not hasattr(conn, "_bgjobs_pooled"):
                    # Checked once per connection: see _prepare.
                    conn._bgjobs_pooled = not is_direct(conn)  # type: ignore[attr-defined]
                yield conn
            return
        with translate_errors(), self.pool.lend() as lent:
            lenient(lent)
            yield lent
            mark_used(lent)

    # Jobs ----------------------------------------------------------------------------------

    def insert_job(self, new: NewJob, *, conn: psycopg.Connection | None = None) -> Inserted:
        """Insert one job in one statement; ``conn`` inserts inside the caller's transaction.

        An idempotency-key replay returns the earlier job (created False). An exclusive type
        with a job already pending or running for the user raises Conflict naming that job.
        Neither raises inside the caller's transaction: the insert is ON CONFLICT DO NOTHING,
        and only then a second statement reads the row that won.
        """
        args = insert_job_args(new)
        clash: dict[str, Any] | None = None
        with self.connection(conn) as c:
            # A clashing row committed after a statement began is invisible to it, so after
            # an empty answer from both, one more try (a new snapshot) sees it.
            for _ in range(2):
                row = c.execute(q("insert_job"), args, prepare=_prepare(c)).fetchone()
                if row is not None:
                    return Inserted(_pending_job(new, *row), True)
                with c.cursor(row_factory=dict_rows) as cur:
                    lenient(cur)
                    clash = cur.execute(q("find_clashing_job"), args,
                                        prepare=_prepare(c)).fetchone()
                if clash is not None:
                    break
        return clashed(new, clash)

    def insert_jobs(self, job_type: str, params_list: Sequence[dict[str, Any]], *,
                    user_id: int | None = None, max_attempts: int = 3,
                    depends_on: Sequence[UUID] | None = None,
                    run_if_dependency_fails: bool = False, workflow_id: UUID | None = None,
                    conn: psycopg.Connection | None = None) -> list[Job]:
        """Insert many jobs of one type in one statement; returns them in the order given."""
        if not params_list:
            return []
        args = insert_jobs_args(job_type, params_list, user_id, max_attempts, depends_on,
                                run_if_dependency_fails, workflow_id)
        with self.connection(conn) as c:
            row = c.execute(q("insert_jobs"), args, prepare=_prepare(c)).fetchone()
        return inserted_jobs(job_type, params_list, user_id, max_attempts, depends_on,
                             run_if_dependency_fails, row)

    def get_job(self, job_id: UUID, user_id: int | None = None) -> Job:
        with self.connection() as c, c.cursor(row_factory=job_row) as cur:
            job = cur.execute(q("get_job"), {"id": job_id, "user_id": user_id}).fetchone()
        if job is None:
            raise NotFound(f"no job {job_id}")
        return job

    def get_jobs(self, job_ids: Iterable[UUID]) -> list[Job]:
        with self.connection() as c, c.cursor(row_factory=job_row) as cur:
            return cur.execute(q("get_jobs"), {"ids": list(job_ids)}).fetchall()

    def list_jobs(
        self,
        *,
        user_id: int | None = None,
        status: str | None = None,
        job_type: str | None = None,
        limit: int = 50,
        before: tuple[datetime | str, UUID] | None = None,
    ) -> list[Job]:
        """Newest first; ``before`` is the (created_at, id) of the last job of the previous page."""
        args = {
            "user_id": user_id, "status": status, "job_type": job_type, "limit": limit,
            "before_created": before[0] if before else None,
            "before_id": before[1] if before else None,
        }
        with self.connection() as c, c.cursor(row_factory=job_row) as cur:
            return cur.execute(q("list_jobs"), args).fetchall()

    def get_workflow(self, workflow_id: UUID, user_id: int | None = None,
                     limit: int = WORKFLOW_JOBS_MAX) -> Workflow:
        """A workflow's summary and first ``limit`` jobs; NotFound if it has none (of theirs)."""
        args = {"id": workflow_id, "user_id": user_id, "limit": limit + 1}
        with self.connection() as c, c.cursor(row_factory=dict_rows) as cur:
            counts = cur.execute(q("workflow_summary"), args).fetchone()
            with c.cursor(row_factory=job_row) as jobs_cur:
                jobs = jobs_cur.execute(q("workflow_jobs"), args).fetchall()
        return workflow_of(workflow_id, counts, jobs, limit)

    def cancel(self, job_id: UUID, user_id: int | None = None) -> Job:
        """Cancel a pending or running job; NotFound if missing or not theirs, Conflict if done."""
        with self.connection() as c, c.cursor(row_factory=job_row) as cur:
            job = cur.execute(q("cancel_job"), {"id": job_id, "user_id": user_id}).fetchone()
            if job is not None:
                return job
            owner = c.execute(q("job_owner"), {"id": job_id}).fetchone()
        raise not_cancelled(job_id, user_id, owner)

    def requeue(self, job_id: UUID) -> Job:
        with self.connection() as c, c.cursor(row_factory=job_row) as cur:
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
        by_id = {job.id: job for job in self.get_jobs(spec.id for spec in specs)}
        return [by_id[spec.id] for spec in specs if spec.id in by_id]

    def claim_specs(
        self,
        worker_id: str,
        types: Sequence[str],
        *,
        limit: int = 1,
        lease_seconds: int = 30,
        now: datetime | None = None,
    ) -> list[Claimed]:
        """Claim up to ``limit`` due jobs of ``types`` in one statement, best first.

        Rows are (id, job_type, params, attempts, max_attempts, version): at thousands of jobs
        a second, parsing whole rows (timestamps, progress) costs the worker more than running
        them.
        """
        args = {"worker_id": worker_id, "types": list(types), "limit": limit,
                "lease_seconds": lease_seconds, "now": now}
        with self.connection() as c:
            claimed = [Claimed(*row) for row in c.execute(q("claim_jobs"), args)]
        for job in claimed:
            if isinstance(job.params, Unreadable):  # the task's check fails it, with this logged
                log.warning("job %s: its params cannot be read (%r...): it will fail",
                            job.id, str(job.params))
        return claimed

    def next_run_after(self, types: Sequence[str]) -> datetime | None:
        with self.connection() as c:
            row = c.execute(q("next_run_after"), {"types": list(types)}).fetchone()
        return readable(row[0]) if row else None

    def heartbeat(self, attempts: Sequence[Attempt]) -> set[UUID]:
        """Refresh heartbeats; returns the job ids still owned (the rest were lost)."""
        return self._fenced("heartbeat_jobs", attempts, {})

    # The outcome writes read their items by position (core/jobs.py's outcome types, or tuples
    # of their leading fields), as the worker made them: nothing is rebuilt on the way.

    def report_progress(self, updates: Sequence[ProgressUpdate]) -> set[UUID]:
        """Write progress for many attempts at once; returns the job ids still owned."""
        return self._fenced("progress_jobs", [u[0] for u in updates],
                            {"progress": [Jsonb(u[1]) for u in updates]})

    def complete(self, done: Sequence[Completion]) -> set[UUID]:
        """Finish attempts as complete, with their results; returns the job ids still owned."""
        return self._fenced("complete_jobs", [d[0] for d in done], {
            "results": [Jsonb(d[1]) for d in done],
            "progress": [Jsonb(d[2]) if d[2] is not None else None for d in done],
        })

    def fail(self, failed: Sequence[Failure]) -> dict[UUID, str]:
        """End failed attempts (retried after their delay while allowed); {id: new status}."""
        attempts = [f[0] for f in failed]
        args = {
            **_attempt_arrays(attempts),
            "errors": [Jsonb(f[1]) for f in failed],
            "retryable": [f[2] for f in failed],
            "delays": [float(f[3]) for f in failed],
        }
        if not attempts:
            return {}
        with self.connection() as c:
            return {row[0]: row[1] for row in c.execute(q("fail_jobs"), args)}

    def release(self, attempts: Sequence[Attempt]) -> set[UUID]:
        """Hand attempts back to pending without spending an attempt (graceful shutdown)."""
        return self._fenced("release_jobs", attempts, {})

    def reap_stale(self, now: datetime | None = None, reaper: str | None = None,
                   running: Iterable[UUID | str] | None = None) -> list[dict[str, Any]]:
        """Take back jobs whose heartbeat is older than their lease (one reaper at a time);
        ``reaper`` is the calling worker's id and ``running`` the ids of the jobs it runs: those
        are alive and left alone (None: every job naming it)."""
        with self.connection() as c, c.transaction(), c.cursor(row_factory=dict_rows) as cur:
            return cur.execute(q("reap_stale"), _reaper(now, reaper, running)).fetchall()

    def reap_and_list_listeners(self, application_name: str, now: datetime | None = None,
                                reaper: str | None = None,
                                running: Iterable[UUID | str] | None = None
                                ) -> tuple[list[dict[str, Any]], list[int]]:
        """``reap_stale``, and in the same transaction (no commit more) the backend pids of the
        connections named ``application_name`` on this database, in order."""
        with self.connection() as c, c.transaction(), c.cursor(row_factory=dict_rows) as cur:
            reaped = cur.execute(q("reap_stale"), _reaper(now, reaper, running)).fetchall()
            pids = [row["pid"] for row in cur.execute(
                q("worker_listeners"), {"application_name": application_name})]
        return reaped, pids

    def wake_workers(self, job_types: Iterable[str]) -> None:
        """Ask every idle worker of these types to claim (NOTIFY '*<type>')."""
        with self.connection() as c:
            c.execute(q("wake_workers"), {"types": sorted(set(job_types))}).fetchall()

    def summary(self) -> list[dict[str, Any]]:
        with self.connection() as c, c.cursor(row_factory=dict_rows) as cur:
            return cur.execute(q("summary")).fetchall()

    def _fenced(self, query: str, attempts: Sequence[Attempt], extra: dict[str, Any]) -> set[UUID]:
        if not attempts:
            return set()
        with self.connection() as c:
            rows = c.execute(q(query), {**_attempt_arrays(attempts), **extra}).fetchall()
        return {row[0] for row in rows}

    # Users and tokens ------------------------------------------------------------------------

    def create_user(self, name: str, user_id: int | None = None, *,
                    is_admin: bool = False) -> tuple[User, str]:
        """A new user and their first API token (returned in clear, stored hashed).

        ``user_id`` makes the user with that id: in an app's database (see
        ``host_users_table``), the id of the app's user this bgjobs user is.
        """
        if user_id is None and self.host_users_table():
            # Its own numbering would link the user to whichever app user has that id.
            raise InvalidInput("bgjobs's users are the app's users in this database: "
                               "give the id of the app's user")
        token = "bgj_" + secrets.token_urlsafe(32)
        query, args = (("insert_user", {"name": name, "is_admin": is_admin}) if user_id is None
                       else ("insert_user_with_id",
                             {"name": name, "id": user_id, "is_admin": is_admin}))
        with self.connection() as c, c.transaction(), c.cursor(row_factory=record_row(User)) as cur:
            try:
                user = cur.execute(q(query), args).fetchone()
            except psycopg.errors.UniqueViolation as exc:
                if exc.diag.constraint_name == "bgjobs_users_pkey":
                    raise Conflict(f"user id {user_id} already has a bgjobs user") from exc
                raise Conflict(f"user {name!r} already exists") from exc
            except psycopg.errors.CheckViolation as exc:
                raise InvalidInput(
                    f"bad user name {name!r}: use 1-64 letters, digits, or . _ @ -") from exc
            except psycopg.errors.ForeignKeyViolation as exc:
                raise NotFound(f"the app's users table has no user with id {user_id}") from exc
            assert user is not None
            c.execute(q("insert_token"), {"user_id": user.id, "token_hash": hash_token(token)})
        return user, token

    def create_token(self, name: str) -> tuple[User, str]:
        """Another API token for an existing user."""
        token = "bgj_" + secrets.token_urlsafe(32)
        with self.connection() as c, c.transaction(), c.cursor(row_factory=record_row(User)) as cur:
            user = cur.execute(q("get_user_by_name"), {"name": name}).fetchone()
            if user is None:
                raise NotFound(f"no user {name!r}")
            c.execute(q("insert_token"), {"user_id": user.id, "token_hash": hash_token(token)})
        return user, token

    def host_users_table(self) -> str | None:
        """The app's users table that bgjobs's users are rows of; None when stand-alone."""
        with self.connection() as c:
            row = c.execute(q("host_users_table")).fetchone()
        return row[0] if row else None

    def get_user(self, name: str) -> User:
        with self.connection() as c, c.cursor(row_factory=record_row(User)) as cur:
            user = cur.execute(q("get_user_by_name"), {"name": name}).fetchone()
        if user is None:
            raise NotFound(f"no user {name!r}")
        return user

    def find_user(self, query: str, args: dict[str, Any]) -> User | None:
        """Run one of the named user lookups (see ``server.auth.lookup``)."""
        with self.connection() as c, c.cursor(row_factory=record_row(User)) as cur:
            return cur.execute(q(query), args).fetchone()

    def user_for_token(self, token: str) -> User | None:
        return self.find_user("user_for_token", {"token_hash": hash_token(token)})

    def user_for_session(self, session_id: UUID) -> User | None:
        """The user of a live session (not ended or expired, its token not revoked)."""
        return self.find_user("session_user", {"session_id": session_id})

    def start_session(self, user: User, seconds: int) -> UUID:
        """A session for ``user``, signed in with the token ``user.token_id``."""
        with self.connection() as c:
            row = c.execute(q("start_session"), {"user_id": user.id, "token_id": user.token_id,
                                                 "seconds": seconds}).fetchone()
        assert row is not None
        return row[0]

    def end_session(self, session_id: UUID) -> bool:
        """Sign-out: False if the session had already ended."""
        with self.connection() as c:
            return c.execute(q("end_session"), {"session_id": session_id}).rowcount == 1

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
        with self.connection() as c, c.cursor(row_factory=dict_rows) as cur:
            return cur.execute(q("finished_recently"), {"seconds": seconds}).fetchall()


# What the sync Store and the async one (core/astore.py) share: the arguments of a statement
# and what its answer means. Pure: only the I/O differs between the two.


def insert_job_args(new: NewJob) -> dict[str, Any]:
    """The arguments of insert_job (and find_clashing_job) for ``new``."""
    return {
        "job_type": new.job_type, "user_id": new.user_id,
        "params": new.params_json if new.params_json is not None else Jsonb(new.params),
        "priority": new.priority, "run_after": new.run_after,
        "max_attempts": new.max_attempts, "idempotency_key": new.idempotency_key,
        "exclusive_key": new.job_type if new.exclusive else None,
        "depends_on": list(new.depends_on) if new.depends_on else None,
        "run_if_dependency_fails": new.run_if_dependency_fails,
        "workflow_id": new.workflow_id,
    }


def clashed(new: NewJob, clash: dict[str, Any] | None) -> Inserted:
    """What an insert that made no row means: an idempotency-key replay (the earlier job), or
    Conflict (an exclusive type's job already there, or none found twice: a race)."""
    if clash is None:
        raise Conflict("the job clashes with one being enqueued at this moment; retry")
    job = Job(**{name: clash[name] for name in JOB_COLUMNS})
    if clash["outcome"] == "exclusive":
        raise Conflict(f"a {new.job_type} job is already pending or running for this user",
                       job.id)
    return Inserted(job, False)


def insert_jobs_args(job_type: str, params_list: Sequence[dict[str, Any]],
                     user_id: int | None, max_attempts: int,
                     depends_on: Sequence[UUID] | None, run_if_dependency_fails: bool,
                     workflow_id: UUID | None) -> dict[str, Any]:
    """The arguments of insert_jobs."""
    # One JSON array, not an array of jsonb values: one json.dumps instead of one per job,
    # and nothing but the ids comes back (parsing 10,000 whole rows cost more than the
    # insert itself, see docs/benchmarks.md).
    return {"job_type": job_type, "user_id": user_id, "max_attempts": max_attempts,
            "params": json.dumps(params_list, separators=(",", ":")),
            "depends_on": list(depends_on) if depends_on else None,
            "run_if_dependency_fails": run_if_dependency_fails, "workflow_id": workflow_id}


def inserted_jobs(job_type: str, params_list: Sequence[dict[str, Any]], user_id: int | None,
                  max_attempts: int, depends_on: Sequence[UUID] | None,
                  run_if_dependency_fails: bool, row: Sequence[Any] | None) -> list[Job]:
    """The jobs insert_jobs made, in the order given, from its one row of ids."""
    assert row is not None
    new = NewJob(job_type, {}, user_id, max_attempts=max_attempts, depends_on=depends_on,
                 run_if_dependency_fails=run_if_dependency_fails)
    ids = row[0]
    fields = vars(_pending_job(new, ids[0], *row[1:]))
    return [_job_like(fields, id=job_id, params=params)
            for job_id, params in zip(ids, params_list, strict=True)]


def workflow_of(workflow_id: UUID, counts: dict[str, Any] | None, jobs: list[Job],
                limit: int) -> Workflow:
    """A Workflow from workflow_summary and workflow_jobs (read with ``limit`` + 1)."""
    if not counts or not counts["total"]:
        raise NotFound(f"no workflow {workflow_id}")
    failed = counts.pop("failed")
    return Workflow(workflow_id, counts, failed, jobs[:limit], len(jobs) > limit)


def not_cancelled(job_id: UUID, user_id: int | None, owner: Sequence[Any] | None) -> BgjobsError:
    """Why cancel_job changed nothing, from job_owner's row: NotFound or Conflict."""
    if owner is None or (user_id is not None and owner[0] != user_id):
        return NotFound(f"no job {job_id}")
    return Conflict(f"job {job_id} has already finished", job_id)


def _prepare(conn: psycopg.Connection) -> bool | None:
    """False on a caller's connection that goes through a pooler (its prepared statements
    would outlive the transaction's server connection), else None: the connection decides."""
    return False if getattr(conn, "_bgjobs_pooled", False) else None


def _pending_job(new: NewJob, job_id: UUID, created_at: datetime, status: str = "pending",
                 waiting_for: int = 0, workflow_id: UUID | None = None,
                 result: Any = None) -> Job:
    """The row an insert of ``new`` made: what was sent, the columns' defaults, and what
    waiting for ``depends_on`` made of it (the insert returns those).

    Reading the whole row back (RETURNING *) cost a tenth of a one-job enqueue and half of a
    10,000-job one; tests/integration/test_enqueue.py checks this against the stored row.
    """
    return _job_like({
        "id": job_id, "user_id": new.user_id, "job_type": new.job_type, "status": status,
        "progress": {}, "result": result, "created_at": created_at, "updated_at": created_at,
        "params": new.params, "priority": new.priority,
        "run_after": new.run_after or created_at, "attempts": 0,
        "max_attempts": new.max_attempts, "lease_seconds": 30, "worker_id": None,
        "heartbeat_at": None, "started_at": None, "finished_at": None, "version": 1,
        "idempotency_key": new.idempotency_key,
        "exclusive_key": new.job_type if new.exclusive else None,
        "depends_on": _distinct(new.depends_on), "waiting_for": waiting_for,
        "run_if_dependency_fails": new.run_if_dependency_fails, "workflow_id": workflow_id,
        "unreadable": ()})


def _distinct(ids: Sequence[UUID] | None) -> list[UUID] | None:
    """depends_on as the insert stores it (each once, in the order given), None for none."""
    return list(dict.fromkeys(ids)) if ids else None


def _job_like(fields: dict[str, Any], **changes: Any) -> Job:
    """A Job with ``fields`` but for ``changes``, without the frozen dataclass's __init__.

    dataclasses.replace() took 12 us a job, as long as the database took to insert it.
    """
    job = object.__new__(Job)
    vars(job).update(fields, **changes)
    return job


def _reaper(now: datetime | None, reaper: str | None,
            running: Iterable[UUID | str] | None) -> dict[str, Any]:
    return {"now": now, "reaper": reaper,
            "running": None if running is None else [str(i) for i in running]}


def _attempt_arrays(attempts: Sequence[Attempt]) -> dict[str, list[Any]]:
    return {
        "ids": [a.job_id for a in attempts],
        "worker_ids": [a.worker_id for a in attempts],
        "attempts": [a.attempt for a in attempts],
    }


@contextmanager
def translate_errors(suspect: Callable[[], None] | None = None) -> Iterator[None]:
    """Driver errors as bgjobs's exceptions (also used by the events service's async reads).

    ``suspect`` is called when the database seems gone (a Breaker's, to find out at once).
    """
    try:
        yield
    except PoolTimeout as exc:
        if suspect:
            suspect()
        raise DatabaseUnavailable("no database connection available (is Postgres up?)") from exc
    except psycopg.OperationalError as exc:
        if not is_outage(exc):  # Postgres answered: it is up (a protocol error, a timeout)
            raise DatabaseError(f"the database refused the statement: {first_line(exc)}") from exc
        if suspect:
            suspect()
        raise DatabaseUnavailable(f"database unavailable: {first_line(exc)}") from exc
    except (psycopg.errors.InvalidSqlStatementName,
            psycopg.errors.DuplicatePreparedStatement) as exc:
        raise DatabaseError(f"{first_line(exc)}: prepared statements through a pooler in "
                            "transaction mode? (docs/operations.md, connection poolers)") from exc
    except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedFunction,
            psycopg.errors.UndefinedColumn) as exc:
        raise NotMigrated(f"{first_line(exc)}: this database is not (fully) migrated for this "
                          "version of bgjobs; run `bgjobs migrate`") from exc
    except psycopg.errors.ForeignKeyViolation as exc:
        if (exc.diag.constraint_name or "").startswith("background_jobs_depends_on"):
            raise InvalidInput(f"after: {first_line(exc)}") from exc
        # The detail names the id and the table it is missing from ("Key (user_id)=(7) is not
        # present in table "users"."): which users table jobs belong to (docs/dba.md).
        raise InvalidInput(f"no such user: {exc.diag.message_detail or first_line(exc)}") from exc
    except psycopg.DataError as exc:
        if exc.sqlstate is None:
            # Raised by psycopg loading a result, not by Postgres: a stored value this process
            # cannot represent. Not the caller's input, and nothing was refused.
            raise UnreadableValue(f"a stored value cannot be read: {first_line(exc)} (see "
                                  "docs/dba.md, 'Values bgjobs cannot read')") from exc
        # A value Postgres refuses to store (out of range, a NUL in JSON text): the caller's
        # input, and the statement changed nothing.
        raise InvalidInput(f"the database rejected a value: {first_line(exc)}") from exc
