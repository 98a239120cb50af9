"""``bgjobs.wait(job_id, timeout=...)``: block until a job finishes, woken by NOTIFY.

One dedicated LISTEN connection per call (outside the pool, whose connections must not keep
a LISTEN): subscribe first, then read the row, then sleep on ``background_jobs_progress`` until
a notification about this job says it finished (or was too big to say, or named it among the
many jobs one statement changed: both re-read the row).
No polling: the connection sleeps in the kernel until Postgres sends something.
"""

from __future__ import annotations

import json
import time
from uuid import UUID

import psycopg
from psycopg import sql

from bgjobs.core.db import connect
from bgjobs.core.errors import BgjobsError, DatabaseUnavailable, first_line
from bgjobs.core.jobs import FINISHED, Job, Workflow, parse_job_id
from bgjobs.core.store import Store
from bgjobs.tasks.enqueue import default_store

CHANNEL = "background_jobs_progress"
APPLICATION_NAME = "bgjobs-wait"


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
    cannot be reached.
    """
    job_id = parse_job_id(job_id)
    if timeout is not None and not timeout >= 0:
        raise ValueError(f"timeout must be a number of seconds >= 0, got {timeout!r}")
    store = store or default_store()
    deadline = None if timeout is None else time.monotonic() + timeout
    url = str(store.pool.conninfo)
    try:
        with connect(url, autocommit=True, application_name=APPLICATION_NAME) as conn:
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
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
    wanted = str(job_id)
    for note in conn.notifies(timeout=timeout, stop_after=1):
        try:
            payload = json.loads(note.payload)
        except ValueError:
            continue
        if not isinstance(payload, dict):
            continue
        if wanted in (payload.get("ids") or ()):
            return True  # one of many jobs whose status a statement changed (010): read it
        if payload.get("id") != wanted:
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
    try:
        with connect(str(store.pool.conninfo), autocommit=True,
                     application_name=APPLICATION_NAME) as conn:
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
            workflow = store.get_workflow(workflow_id, user_id)
            while not workflow.finished:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise WaitTimeout(f"workflow {workflow_id} is not finished after "
                                      f"{timeout}s", None, workflow)
                ids = {str(job.id) for job in workflow.jobs}
                for note in conn.notifies(timeout=min(1.0, left if left is not None else 1.0),
                                          stop_after=1):
                    if _names_any(note.payload, ids):
                        break
                workflow = store.get_workflow(workflow_id, user_id)
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"lost the database while waiting: {first_line(exc)}") from exc
    return workflow


def _names_any(payload: str, ids: set[str]) -> bool:
    """Whether a progress notification is about one of ``ids`` (or too big to say)."""
    try:
        data = json.loads(payload)
    except ValueError:
        return False
    if not isinstance(data, dict):
        return False
    return data.get("id") in ids or bool(ids.intersection(data.get("ids") or ()))
