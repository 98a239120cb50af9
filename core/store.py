"""The store callers hold: one object over one ConnectionSource, made of a store per subject.

Every SQL statement bgjobs runs goes through the stores (the events service runs the same named
queries, async: core/astore.py): the jobs (core/store_jobs.py), the worker's attempts
(core/store_attempts.py), users and sessions (core/store_users.py) and operations
(core/store_ops.py). ``Store`` holds one of each over the same source and answers to their
method names, so a caller needs one object; each method is its part's (documented there).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg

from bgjobs.core.connections import ConnectionSource, lend
from bgjobs.core.jobs import (
    Attempt,
    Claimed,
    Completion,
    Failure,
    Job,
    ProgressUpdate,
    User,
    Workflow,
)
from bgjobs.core.store_attempts import AttemptStore
from bgjobs.core.store_jobs import WORKFLOW_JOBS_MAX, Inserted, JobStore, NewJob
from bgjobs.core.store_ops import (
    IoProcesses,
    JobTypeRow,
    OperationsStore,
    Retention,
    Schedule,
)
from bgjobs.core.store_users import UserStore

__all__ = ["NewJob", "Store"]


class Store:
    """Jobs, attempts, users and operations over one ConnectionSource (a pool, or a worker's
    one connection)."""

    def __init__(self, pool: ConnectionSource) -> None:
        #: Where connections come from (named ``pool`` for the common case).
        self.pool = pool
        self.jobs = JobStore(pool)
        self.attempts = AttemptStore(pool)
        self.users = UserStore(pool)
        self.ops = OperationsStore(pool)

    @property
    def url(self) -> str:
        """Where the store's connections go (``ConnectionSource.url``)."""
        return self.pool.url

    def connection(self, conn: psycopg.Connection | None = None
                   ) -> AbstractContextManager[psycopg.Connection]:
        """The caller's connection if given (their transaction), else one the source lends."""
        return lend(self.pool, conn)

    # JobStore (core/store_jobs.py) ------------------------------------------------------------

    def insert_job(self, new: NewJob, *, conn: psycopg.Connection | None = None) -> Inserted:
        return self.jobs.insert_job(new, conn=conn)

    def insert_jobs(self, job_type: str, params_list: Sequence[dict[str, Any]], *,
                    user_id: int | None = None, max_attempts: int = 3,
                    depends_on: Sequence[UUID] | None = None,
                    run_if_dependency_fails: bool = False, workflow_id: UUID | None = None,
                    conn: psycopg.Connection | None = None) -> list[Job]:
        return self.jobs.insert_jobs(job_type, params_list, user_id=user_id,
                                     max_attempts=max_attempts, depends_on=depends_on,
                                     run_if_dependency_fails=run_if_dependency_fails,
                                     workflow_id=workflow_id, conn=conn)

    def get_job(self, job_id: UUID, user_id: int | None = None) -> Job:
        return self.jobs.get_job(job_id, user_id)

    def get_jobs(self, job_ids: Iterable[UUID]) -> list[Job]:
        return self.jobs.get_jobs(job_ids)

    def list_jobs(self, *, user_id: int | None = None, status: str | None = None,
                  job_type: str | None = None, limit: int = 50,
                  before: tuple[datetime | str, UUID] | None = None) -> list[Job]:
        return self.jobs.list_jobs(user_id=user_id, status=status, job_type=job_type, limit=limit,
                                   before=before)

    def get_workflow(self, workflow_id: UUID, user_id: int | None = None,
                     limit: int = WORKFLOW_JOBS_MAX) -> Workflow:
        return self.jobs.get_workflow(workflow_id, user_id, limit)

    def cancel(self, job_id: UUID, user_id: int | None = None) -> Job:
        return self.jobs.cancel(job_id, user_id)

    def requeue(self, job_id: UUID) -> Job:
        return self.jobs.requeue(job_id)

    # AttemptStore (core/store_attempts.py) ----------------------------------------------------

    def claim(self, worker_id: str, types: Sequence[str], *, limit: int = 1,
              lease_seconds: int = 30, now: datetime | None = None) -> list[Job]:
        return self.attempts.claim(worker_id, types, limit=limit, lease_seconds=lease_seconds,
                                   now=now)

    def claim_specs(self, worker_id: str, types: Sequence[str], *, limit: int = 1,
                    lease_seconds: int = 30, now: datetime | None = None) -> list[Claimed]:
        return self.attempts.claim_specs(worker_id, types, limit=limit,
                                         lease_seconds=lease_seconds, now=now)

    def next_due_in(self, types: Sequence[str], claim_age: float = 0.0) -> float | None:
        return self.attempts.next_due_in(types, claim_age)

    def heartbeat(self, attempts: Sequence[Attempt]) -> set[UUID]:
        return self.attempts.heartbeat(attempts)

    def report_progress(self, updates: Sequence[ProgressUpdate]) -> set[UUID]:
        return self.attempts.report_progress(updates)

    def complete(self, done: Sequence[Completion]) -> set[UUID]:
        return self.attempts.complete(done)

    def fail(self, failed: Sequence[Failure]) -> dict[UUID, str]:
        return self.attempts.fail(failed)

    def release(self, attempts: Sequence[Attempt]) -> set[UUID]:
        return self.attempts.release(attempts)

    def reap_stale(self, now: datetime | None = None, reaper: str | None = None,
                   running: Iterable[UUID | str] | None = None) -> list[dict[str, Any]]:
        return self.attempts.reap_stale(now, reaper, running)

    def reap_and_list_listeners(self, application_name: str, now: datetime | None = None,
                                reaper: str | None = None,
                                running: Iterable[UUID | str] | None = None
                                ) -> tuple[list[dict[str, Any]], list[int]]:
        return self.attempts.reap_and_list_listeners(application_name, now, reaper, running)

    def wake_workers(self, job_types: Iterable[str]) -> None:
        return self.attempts.wake_workers(job_types)

    # UserStore (core/store_users.py) ----------------------------------------------------------

    def create_user(self, name: str, user_id: int | None = None, *,
                    is_admin: bool = False) -> tuple[User, str]:
        return self.users.create_user(name, user_id, is_admin=is_admin)

    def create_token(self, name: str) -> tuple[User, str]:
        return self.users.create_token(name)

    def host_users_table(self) -> str | None:
        return self.users.host_users_table()

    def get_user(self, name: str) -> User:
        return self.users.get_user(name)

    def find_user(self, query: str, args: dict[str, Any]) -> User | None:
        return self.users.find_user(query, args)

    def user_for_token(self, token: str) -> User | None:
        return self.users.user_for_token(token)

    def user_for_session(self, session_id: UUID) -> User | None:
        return self.users.user_for_session(session_id)

    def start_session(self, user: User, seconds: int) -> UUID:
        return self.users.start_session(user, seconds)

    def end_session(self, session_id: UUID) -> bool:
        return self.users.end_session(session_id)

    def revoke_tokens(self, name: str) -> int:
        return self.users.revoke_tokens(name)

    def set_admin(self, name: str, is_admin: bool) -> User:
        return self.users.set_admin(name, is_admin)

    def user_names(self, ids: Iterator[int] | Sequence[int]) -> dict[int, str]:
        return self.users.user_names(ids)

    # OperationsStore (core/store_ops.py) ------------------------------------------------------

    def sync_job_types(self, types: Sequence[JobTypeRow]) -> None:
        return self.ops.sync_job_types(types)

    def limited_types(self) -> dict[str, float | None]:
        return self.ops.limited_types()

    def job_type_limits(self) -> list[dict[str, Any]]:
        return self.ops.job_type_limits()

    def sync_schedules(self, declared: Sequence[tuple[str, str, str]],
                       undeclared: Sequence[str]) -> None:
        return self.ops.sync_schedules(declared, undeclared)

    def schedules(self) -> list[Schedule]:
        return self.ops.schedules()

    def get_schedule(self, name: str) -> Schedule:
        return self.ops.get_schedule(name)

    def advance_schedule(self, c: psycopg.Connection, name: str, tick: datetime) -> bool:
        return self.ops.advance_schedule(c, name, tick)

    def schedule_enqueued(self, c: psycopg.Connection, name: str, job_id: UUID) -> None:
        return self.ops.schedule_enqueued(c, name, job_id)

    def purge_batch(self, limit: int, retention: Retention,
                    now: datetime | None = None) -> int | None:
        return self.ops.purge_batch(limit, retention, now)

    def worker_heartbeat(self, worker_id: str, machine: str, pid: int, processes: int,
                         running: int, types: Sequence[str], lease_seconds: int,
                         io: IoProcesses | None = None) -> None:
        return self.ops.worker_heartbeat(worker_id, machine, pid, processes, running, types,
                                         lease_seconds, io)

    def worker_stopped(self, worker_id: str) -> None:
        return self.ops.worker_stopped(worker_id)

    def admin_list_jobs(self, *, user_id: int | None = None, status: str | None = None,
                        job_type: str | None = None, since: datetime | None = None,
                        until: datetime | None = None, limit: int = 50,
                        before: tuple[datetime | str, UUID] | None = None) -> list[Job]:
        return self.ops.admin_list_jobs(user_id=user_id, status=status, job_type=job_type,
                                        since=since, until=until, limit=limit, before=before)

    def throughput(self, since: datetime) -> list[dict[str, Any]]:
        return self.ops.throughput(since)

    def workers(self) -> list[dict[str, Any]]:
        return self.ops.workers()

    def summary(self) -> list[dict[str, Any]]:
        return self.ops.summary()

    def ping(self) -> None:
        return self.ops.ping()

    def finished_recently(self, seconds: int) -> list[dict[str, Any]]:
        return self.ops.finished_recently(seconds)

    def stuck_jobs(self, limit: int = 50) -> list[dict[str, Any]]:
        return self.ops.stuck_jobs(limit)
