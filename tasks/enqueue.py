"""The one enqueue path: the API, the CLI, the dashboard and host code all go through here.

Every job is checked the same way wherever it comes from: its type must be registered, its
params pass the task's validation (defaults filled in), and the task's ``max_attempts`` and
exclusivity are applied. One enqueue is one statement, one round trip; with ``conn=`` it joins
the caller's transaction (rolled back: no job and no notification).

Without ``conn=`` or ``store=``, the functions use a pool of this process's own, opened on first
use against DATABASE_URL (or the running embedded cluster); ``configure()`` points it elsewhere.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple
from uuid import UUID

import psycopg

from bgjobs.core import channels
from bgjobs.core import config as config_mod
from bgjobs.core.db import Pool, database_url, make_pool
from bgjobs.core.errors import Conflict, InvalidParams, NotFound
from bgjobs.core.errors import InvalidRequest as InvalidRequest
from bgjobs.core.jobs import Job, jsonb_text, parse_job_id, time_out_of_range, unstorable
from bgjobs.core.pool_holder import PoolHolder
from bgjobs.core.store import NewJob, Store
from bgjobs.tasks import registry

PRIORITY_MIN, PRIORITY_MAX = -1000, 1000
IDEMPOTENCY_KEY_MAX = 255
#: An idempotency key, wherever it comes from: visible ASCII with spaces only inside, so that a
#: key made in Python can be replayed as an HTTP Idempotency-Key header (HTTP strips outer
#: spaces and carries only ASCII reliably), and the other way round.
IDEMPOTENCY_KEY_PATTERN = rf"^[!-~]([ -~]{{0,{IDEMPOTENCY_KEY_MAX - 2}}}[!-~])?$"
IDEMPOTENCY_KEY_RULE = (f"an idempotency key is 1 to {IDEMPOTENCY_KEY_MAX} printable ASCII "
                        "characters (spaces only inside)")


class Enqueued(NamedTuple):
    """A job and whether this call made it (False: an idempotency-key replay of an earlier one)."""

    job: Job
    created: bool


def enqueue(
    job_type: str,
    params: dict[str, Any] | None = None,
    *,
    user_id: int | None = None,
    priority: int = 0,
    run_after: datetime | None = None,
    idempotency_key: str | None = None,
    after: Sequence[Job | UUID | str] | None = None,
    run_if_dependency_fails: bool = False,
    workflow_id: UUID | str | None = None,
    conn: psycopg.Connection | None = None,
    store: Store | None = None,
) -> Job:
    """Enqueue one job of a registered type and return it (pending).

    ``after``: jobs (or their ids) of the same user that must complete first; the job waits
    (``waiting_for`` > 0) until they have, and is cancelled if one of them fails for good or is
    cancelled, unless ``run_if_dependency_fails`` (docs/workflows.md).

    Raises UnknownTask, InvalidParams or InvalidRequest for bad input (nothing is written),
    Conflict when the type is exclusive and the user already has one pending or running (its
    id in ``job_id``), and DatabaseUnavailable when Postgres cannot be reached.
    """
    return submit(job_type, params, user_id=user_id, priority=priority, run_after=run_after,
                  idempotency_key=idempotency_key, after=after,
                  run_if_dependency_fails=run_if_dependency_fails, workflow_id=workflow_id,
                  conn=conn, store=store).job


def submit(
    job_type: str,
    params: dict[str, Any] | None = None,
    *,
    user_id: int | None = None,
    priority: int = 0,
    run_after: datetime | None = None,
    idempotency_key: str | None = None,
    after: Sequence[Job | UUID | str] | None = None,
    run_if_dependency_fails: bool = False,
    workflow_id: UUID | str | None = None,
    conn: psycopg.Connection | None = None,
    store: Store | None = None,
) -> Enqueued:
    """``enqueue``, also telling whether the job is new or an idempotency-key replay."""
    new = prepare(job_type, params, user_id=user_id, priority=priority, run_after=run_after,
                  idempotency_key=idempotency_key, after=after,
                  run_if_dependency_fails=run_if_dependency_fails, workflow_id=workflow_id)
    return enqueued(new, (store or default_store()).insert_job(new, conn=conn))


def prepare(
    job_type: str,
    params: dict[str, Any] | None = None,
    *,
    user_id: int | None = None,
    priority: int = 0,
    run_after: datetime | None = None,
    idempotency_key: str | None = None,
    after: Sequence[Job | UUID | str] | None = None,
    run_if_dependency_fails: bool = False,
    workflow_id: UUID | str | None = None,
) -> NewJob:
    """The job to insert, checked (no I/O: the sync path and bgjobs.aio share it).

    Raises UnknownTask, InvalidParams or InvalidRequest (see ``enqueue``).
    """
    task = registry.get(job_type)
    checked = task.validate(params)
    params_json = _storable(checked)
    _check_priority(priority)
    run_after = _check_run_after(run_after)
    check_idempotency_key(idempotency_key)
    return NewJob(task.name, checked, user_id, priority, run_after, task.max_attempts,
                  idempotency_key, task.exclusive, dependency_ids(after),
                  run_if_dependency_fails, _workflow_id(workflow_id), params_json)


def enqueued(new: NewJob, inserted: tuple[Job, bool]) -> Enqueued:
    """What inserting ``new`` made; Conflict if an idempotency-key replay names another job."""
    job, created = inserted
    if not created and (job.job_type != new.job_type or job.params != new.params):
        raise Conflict("the idempotency key was already used for a different job", job.id)
    return Enqueued(job, created)


def enqueue_many(
    job_type: str,
    params_list: Sequence[dict[str, Any] | None],
    *,
    user_id: int | None = None,
    after: Sequence[Job | UUID | str] | None = None,
    run_if_dependency_fails: bool = False,
    workflow_id: UUID | str | None = None,
    conn: psycopg.Connection | None = None,
    store: Store | None = None,
) -> list[Job]:
    """Enqueue one job per params object, all of one type, in one statement; in that order.

    With ``after``, every one of them waits for those jobs (a fan-out; see ``enqueue``).
    """
    batch = prepare_many(job_type, params_list, user_id=user_id, after=after,
                         run_if_dependency_fails=run_if_dependency_fails,
                         workflow_id=workflow_id)
    if batch.one is not None:
        return [enqueued(batch.one, (store or default_store()).insert_job(batch.one,
                                                                          conn=conn)).job]
    if not batch.params_list:
        return []
    return (store or default_store()).insert_jobs(batch.job_type, batch.params_list,
                                                  conn=conn, **batch.options())


class Batch(NamedTuple):
    """Many jobs of one type to insert, checked (see ``prepare_many``)."""

    job_type: str
    params_list: list[dict[str, Any]]
    user_id: int | None
    max_attempts: int
    depends_on: list[UUID] | None
    run_if_dependency_fails: bool
    workflow_id: UUID | None
    #: An exclusive type's one job, inserted as ``enqueue`` inserts it (None: the batch).
    one: NewJob | None = None

    def options(self) -> dict[str, Any]:
        """The keyword arguments of ``insert_jobs`` but the type, the params and ``conn``."""
        return {"user_id": self.user_id, "max_attempts": self.max_attempts,
                "depends_on": self.depends_on,
                "run_if_dependency_fails": self.run_if_dependency_fails,
                "workflow_id": self.workflow_id}


def prepare_many(
    job_type: str,
    params_list: Sequence[dict[str, Any] | None],
    *,
    user_id: int | None = None,
    after: Sequence[Job | UUID | str] | None = None,
    run_if_dependency_fails: bool = False,
    workflow_id: UUID | str | None = None,
) -> Batch:
    """``enqueue_many``'s jobs, checked (no I/O: the sync path and bgjobs.aio share it)."""
    task = registry.get(job_type)
    if task.exclusive and len(params_list) > 1:
        raise InvalidRequest(f"{task.name} is exclusive (one pending or running job per user): "
                             "enqueue_many cannot enqueue several")
    checked = []
    for n, params in enumerate(params_list):
        try:
            checked.append(task.validate(params))
        except InvalidParams as exc:
            raise InvalidParams(f"params_list[{n}]: {exc}") from None
    if unstorable(checked):  # one check for all; then find which one, to say so
        for n, params in enumerate(checked):
            try:
                _storable(params)
            except InvalidParams as exc:
                raise InvalidParams(f"params_list[{n}]: {exc}") from None
    depends_on, workflow = dependency_ids(after), _workflow_id(workflow_id)
    one = None
    if task.exclusive and checked:
        one = prepare(task.name, checked[0], user_id=user_id, after=depends_on,
                      run_if_dependency_fails=run_if_dependency_fails, workflow_id=workflow)
    return Batch(task.name, checked, user_id, task.max_attempts, depends_on,
                 run_if_dependency_fails, workflow, one)


def get_job(job_id: UUID | str, *, user_id: int | None = None,
            store: Store | None = None) -> Job | None:
    """The job, or None if there is none (or, with ``user_id``, it is not that user's)."""
    try:
        return (store or default_store()).get_job(parse_job_id(job_id), user_id)
    except NotFound:
        return None


def cancel(job_id: UUID | str, *, user_id: int | None = None, store: Store | None = None) -> Job:
    """Cancel a pending or running job; its worker stops the handler.

    Raises NotFound (no such job, or not that user's) or Conflict (it has already finished).
    """
    return (store or default_store()).cancel(parse_job_id(job_id), user_id)


def run_schedule_now(store: Store, name: str, *, user_id: int | None = None) -> Job:
    """Enqueue a schedule's job at once, through the one enqueue path; its ticks are unchanged.

    Here rather than in tasks/schedules.py: schedules is imported by the registry (to check
    cron expressions), which this module imports; a schedules module that enqueued made a loop.
    """
    schedule = store.get_schedule(name)
    return enqueue(schedule.job_type, schedule.params, priority=schedule.priority,
                   user_id=user_id, store=store)


# The process's own pool --------------------------------------------------------------------


def _opener(url: str | None = None, pool_max: int | None = None) -> Callable[[], Pool]:
    """How this process opens its pool: on ``url`` (default: DATABASE_URL, else the running
    embedded cluster), ``pool_max`` connections at most (default: BGJOBS_POOL_MAX)."""

    def open_pool() -> Pool:
        cfg = config_mod.load()
        return make_pool(url or database_url(cfg), min_size=1,
                         max_size=pool_max or cfg.pool_max, name=channels.ENQUEUE)

    return open_pool


_default = PoolHolder(_opener())


def configure(url: str | None = None, *, pool_max: int | None = None) -> Store:
    """Use this database (default: DATABASE_URL, else the running embedded cluster) from now on.

    Meant for start-up: the pool it replaces is closed, so calls still using it fail.
    """
    return _default.replace(_opener(url, pool_max))


def default_store() -> Store:
    """The process's pool, opened on first use (and anew in a forked child): core/pool_holder.py."""
    return _default.store()


# Checks ------------------------------------------------------------------------------------


def dependency_ids(after: Sequence[Job | UUID | str] | None) -> list[UUID] | None:
    """``after`` as job ids: Jobs, UUIDs or their text; None for none."""
    if after is None:
        return None
    if isinstance(after, str | UUID | Job) or not isinstance(after, Sequence):
        raise InvalidRequest("after must be a list of jobs or job ids")
    ids = []
    for item in after:
        try:
            ids.append(item.id if isinstance(item, Job) else parse_job_id(item))
        except NotFound:
            raise InvalidRequest(f"after: {item!r} is not a job id") from None
    return ids or None


def _workflow_id(value: UUID | str | None) -> UUID | None:
    if value is None or isinstance(value, UUID):
        return value
    try:
        return UUID(value)
    except (TypeError, ValueError, AttributeError):
        raise InvalidRequest(f"workflow_id must be a UUID, got {value!r}") from None


def _storable(params: dict[str, Any]) -> str:
    """The params as jsonb text; refuses what jsonb cannot hold before the database would
    (and abort the caller's work)."""
    try:
        return jsonb_text(params)
    except ValueError as exc:
        raise InvalidParams(f"params {exc}") from None


def _check_priority(priority: int) -> None:
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise InvalidRequest(f"priority must be a whole number, got {priority!r}")
    if not PRIORITY_MIN <= priority <= PRIORITY_MAX:
        raise InvalidRequest(f"priority must be between {PRIORITY_MIN} and {PRIORITY_MAX} "
                             f"(lower runs first), got {priority}")


def _check_run_after(run_after: datetime | None) -> datetime | None:
    """The time in UTC (Postgres refuses some offsets Python takes, e.g. +23:59), if every
    reader can represent it (core.jobs.TIME_RANGE): the table would refuse it anyway."""
    if run_after is None:
        return None
    if not isinstance(run_after, datetime):
        raise InvalidRequest(f"run_after must be a datetime, got {run_after!r}")
    if run_after.tzinfo is None or run_after.utcoffset() is None:
        raise InvalidRequest("run_after needs a timezone (e.g. datetime.now(UTC))")
    problem = time_out_of_range("run_after", run_after)
    if problem:
        raise InvalidRequest(problem)
    return run_after.astimezone(UTC)


def check_idempotency_key(key: str | None) -> None:
    """InvalidRequest unless ``key`` is None or follows IDEMPOTENCY_KEY_PATTERN (one rule for
    the Python API and the HTTP header)."""
    if key is None:
        return
    if not isinstance(key, str) or not re.fullmatch(IDEMPOTENCY_KEY_PATTERN, key):
        raise InvalidRequest(IDEMPOTENCY_KEY_RULE)
