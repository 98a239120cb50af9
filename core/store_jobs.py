"""The jobs themselves: enqueue (one or many), read, list, cancel, requeue; and what the sync
store and the async one (core/astore.py) share about them (pure: only the I/O differs).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, NamedTuple
from uuid import UUID

import psycopg
from psycopg.types.json import Jsonb

from bgjobs.core.connections import (
    ConnectionSource,
    kept_cursor,
    lend,
    own_cursor,
    prepare_flag,
)
from bgjobs.core.errors import BgjobsError, Conflict, NotFound
from bgjobs.core.jobs import JOB_COLUMNS, Job, Workflow
from bgjobs.core.queries import q
from bgjobs.core.rows import dict_rows, job_row, lenient

#: A workflow's jobs listed at most (its counts cover them all).
WORKFLOW_JOBS_MAX = 1000


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


class JobStore:
    """Insert, read, list, cancel and requeue jobs, over a ConnectionSource."""

    def __init__(self, source: ConnectionSource) -> None:
        self.source = source

    def connection(self, conn: psycopg.Connection | None = None
                   ) -> AbstractContextManager[psycopg.Connection]:
        """The caller's connection if given (their transaction), else one the source lends."""
        return lend(self.source, conn)

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
            insert = kept_cursor(c) if conn is None else own_cursor(c)
            # A clashing row committed after a statement began is invisible to it, so after
            # an empty answer from both, one more try (a new snapshot) sees it.
            for _ in range(2):
                # Binary results: the lenient text loaders (core/rows.py) are Python, and
                # created_at is now(), which every reader can hold.
                row = insert.execute(q("insert_job"), args, prepare=prepare_flag(c),
                                     binary=True).fetchone()
                if row is not None:
                    return Inserted(_pending_job(new, *row), True)
                with own_cursor(c, dict_rows) as cur:
                    lenient(cur)
                    clash = cur.execute(q("find_clashing_job"), args,
                                        prepare=prepare_flag(c)).fetchone()
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
            row = own_cursor(c).execute(q("insert_jobs"), args,
                                        prepare=prepare_flag(c)).fetchone()
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


# What the sync JobStore and the async one (core/astore.py) share: the arguments of a statement
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
    del counts["versions"]  # the workflow stream's (server/workflow_stream.py), not a count
    return Workflow(workflow_id, counts, failed, jobs[:limit], len(jobs) > limit)


def not_cancelled(job_id: UUID, user_id: int | None, owner: Sequence[Any] | None) -> BgjobsError:
    """Why cancel_job changed nothing, from job_owner's row: NotFound or Conflict."""
    if owner is None or (user_id is not None and owner[0] != user_id):
        return NotFound(f"no job {job_id}")
    return Conflict(f"job {job_id} has already finished", job_id)


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

