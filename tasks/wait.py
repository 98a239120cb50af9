"""``bgjobs.wait(job_id, timeout=...)``: block until a job finishes, woken by NOTIFY.

One dedicated LISTEN connection per call (outside the pool, whose connections must not keep
a LISTEN): subscribe first, then read the row, then sleep on ``background_jobs_progress`` until
a notification about this job says it finished (or was too big to say, or named it among the
many jobs one statement changed: both re-read the row).
No polling: the connection sleeps in the kernel until Postgres sends something.
"""

from __future__ import annotations

import time
from uuid import UUID

import psycopg

from bgjobs.core import channels
from bgjobs.core import config as config_mod
from bgjobs.core.errors import BgjobsError, DatabaseUnavailable, first_line
from bgjobs.core.jobs import FINISHED, Job, Workflow, parse_job_id
from bgjobs.core.store import Store
from bgjobs.tasks.enqueue import default_store


class WaitTimeout(BgjobsError, TimeoutError):
    """The job (or workflow) had not finished when the timeout ran out; ``job`` (or
    ``workflow``) is its state then."""

    def __init__(self, message: str, job: Job | None,
                 workflow: Workflow | None = None) -> None:
        super().__init__(message)
        self.job = job
        self.workflow = workflow


def wait(job_id: UUID | str, timeout: float | None = None, *, user_id: int | None = None,
         store: Store | None = None) -> Job:
    """The job once it is complete, error or cancelled.

    Raises WaitTimeout after ``timeout`` seconds (None: wait for ever), NotFound if there is no
    such job (or, with ``user_id``, it is not that user's), DatabaseUnavailable if Postgres
    cannot be reached, NoSession if the URL it LISTENs on is a pooler in transaction mode (it
    LISTENs on BGJOBS_DIRECT_URL when that is set, else on the store's database).
    """
    job_id = parse_job_id(job_id)
    if timeout is not None and not timeout >= 0:
        raise ValueError(f"timeout must be a number of seconds >= 0, got {timeout!r}")
    store = store or default_store()
    deadline = None if timeout is None else time.monotonic() + timeout
    url = config_mod.load().direct_url or str(store.pool.conninfo)
    try:
        with channels.listen(url, (channels.PROGRESS,), channels.WAIT).conn as conn:
            job = store.get_job(job_id, user_id)  # after LISTEN: nothing falls in between
            while job.status not in FINISHED:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise WaitTimeout(f"job {job_id} is still {job.status} after {timeout}s",
                                      job)
                if _finished_news(conn, job_id, left):
                    job = store.get_job(job_id, user_id)
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"lost the database while waiting: {first_line(exc)}") from exc
    return job


def _finished_news(conn: psycopg.Connection, job_id: UUID, timeout: float | None) -> bool:
    """Sleep until notifications arrive (or ``timeout``); True if one may mean it finished."""
    for note in conn.notifies(timeout=timeout, stop_after=1):
        payload = channels.parse_progress(note.payload)
        if payload is None:
            continue
        if "ids" in payload:
            # One of many jobs whose status a statement changed (010): read it.
            if job_id in payload["ids"]:  # type: ignore[typeddict-item]
                return True
            continue
        if payload["id"] != job_id:  # type: ignore[typeddict-item]
            continue
        # A payload past Postgres' size limit carries the id alone: read the row.
        return payload.get("status") in FINISHED or "status" not in payload
    return False


def wait_workflow(workflow_id: UUID | str, timeout: float | None = None, *,
                  user_id: int | None = None, store: Store | None = None) -> Workflow:
    """The workflow once none of its jobs is pending or running (see ``wait``).

    Woken by the notifications of its jobs; it also re-reads once a second, for jobs added to
    the workflow after the call began.
    """
    workflow_id = parse_job_id(workflow_id)
    if timeout is not None and not timeout >= 0:
        raise ValueError(f"timeout must be a number of seconds >= 0, got {timeout!r}")
    store = store or default_store()
    deadline = None if timeout is None else time.monotonic() + timeout
    url = config_mod.load().direct_url or str(store.pool.conninfo)
    try:
        with channels.listen(url, (channels.PROGRESS,), channels.WAIT).conn as conn:
            workflow = store.get_workflow(workflow_id, user_id)
            while not workflow.finished:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise WaitTimeout(f"workflow {workflow_id} is not finished after "
                                      f"{timeout}s", None, workflow)
                ids = {job.id for job in workflow.jobs}
                for note in conn.notifies(timeout=min(1.0, left if left is not None else 1.0),
                                          stop_after=1):
                    if _names_any(note.payload, ids):
                        break
                workflow = store.get_workflow(workflow_id, user_id)
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"lost the database while waiting: {first_line(exc)}") from exc
    return workflow


def _names_any(raw: str, ids: set[UUID]) -> bool:
    """Whether a progress notification is about one of ``ids`` (or too big to say)."""
    payload = channels.parse_progress(raw)
    if payload is None:
        return False
    if "ids" in payload:
        return bool(ids.intersection(payload["ids"]))  # type: ignore[typeddict-item]
    return payload["id"] in ids  # type: ignore[typeddict-item]
