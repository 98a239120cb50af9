"""``bgjobs.wait(job_id, timeout=...)``: block until a job finishes, woken by NOTIFY.

One dedicated LISTEN connection per call (outside the pool, whose connections must not keep
a LISTEN): subscribe first, then read the row, then sleep on ``background_jobs_progress`` until
a notification about this job says it finished (or was too big to say, or named it among the
many jobs one statement changed: both re-read the row).
No polling: the connection sleeps in the kernel until Postgres sends something.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
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
    deadline = deadline_of(timeout)
    store = store or default_store()
    with _listening(store) as conn:
        job = store.get_job(job_id, user_id)  # after LISTEN: nothing falls in between
        while job.status not in FINISHED:
            left = left_of(deadline)
            if left is not None and left <= 0:
                raise WaitTimeout(f"job {job_id} is still {job.status} after {timeout}s", job)
            if _finished_news(conn, job_id, left):
                job = store.get_job(job_id, user_id)
    return job


def wait_workflow(workflow_id: UUID | str, timeout: float | None = None, *,
                  user_id: int | None = None, store: Store | None = None) -> Workflow:
    """The workflow once none of its jobs is pending or running (see ``wait``).

    Re-read when a notification names one of its jobs, and at least every REREAD_SECONDS, for
    jobs added to the workflow after the call began.
    """
    workflow_id = parse_job_id(workflow_id)
    deadline = deadline_of(timeout)
    store = store or default_store()
    with _listening(store) as conn:
        workflow = store.get_workflow(workflow_id, user_id)
        reread_at = time.monotonic() + REREAD_SECONDS
        while not workflow.finished:
            left = left_of(deadline)
            if left is not None and left <= 0:
                raise WaitTimeout(f"workflow {workflow_id} is not finished after {timeout}s",
                                  None, workflow)
            until = reread_at - time.monotonic()
            news = _news_about(conn, {job.id for job in workflow.jobs},
                               until if left is None else min(left, until))
            if news or time.monotonic() >= reread_at:
                workflow = store.get_workflow(workflow_id, user_id)
                reread_at = time.monotonic() + REREAD_SECONDS
    return workflow


#: How often ``wait_workflow`` re-reads a workflow that no notification named.
REREAD_SECONDS = 1.0


def deadline_of(timeout: float | None) -> float | None:
    if timeout is not None and not timeout >= 0:
        raise ValueError(f"timeout must be a number of seconds >= 0, got {timeout!r}")
    return None if timeout is None else time.monotonic() + timeout


def left_of(deadline: float | None) -> float | None:
    return None if deadline is None else deadline - time.monotonic()


@contextmanager
def _listening(store: Store) -> Iterator[psycopg.Connection]:
    """A LISTEN connection of its own on background_jobs_progress (see the module docstring)."""
    url = config_mod.load().direct_url or store.url
    try:
        with channels.listen(url, (channels.PROGRESS,), channels.WAIT).conn as conn:
            yield conn
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"lost the database while waiting: {first_line(exc)}") from exc


def _finished_news(conn: psycopg.Connection, job_id: UUID, timeout: float | None) -> bool:
    """Sleep until a notification arrives (or ``timeout``); True if it may mean it finished."""
    return any(may_have_finished(note.payload, job_id)
               for note in conn.notifies(timeout=timeout, stop_after=1))


def _news_about(conn: psycopg.Connection, ids: set[UUID], timeout: float) -> bool:
    """Sleep until a notification names one of ``ids`` (True) or ``timeout`` ends (False)."""
    end = time.monotonic() + timeout
    while (left := end - time.monotonic()) > 0:
        for note in conn.notifies(timeout=left, stop_after=1):
            if names_any(note.payload, ids):
                return True
    return False


# What a progress notification means to a waiter (shared with bgjobs.aio: no I/O).


def may_have_finished(raw: str, job_id: UUID) -> bool:
    """Whether this background_jobs_progress payload may mean ``job_id`` finished: read it."""
    payload = channels.parse_progress(raw)
    if payload is None:
        return False
    if "ids" in payload:
        # One of many jobs whose status a statement changed (010): read it.
        return job_id in payload["ids"]  # type: ignore[typeddict-item]
    if payload["id"] != job_id:  # type: ignore[typeddict-item]
        return False
    # A payload past Postgres' size limit carries the id alone: read the row.
    return payload.get("status") in FINISHED or "status" not in payload


def names_any(raw: str, ids: set[UUID]) -> bool:
    """Whether this background_jobs_progress payload names one of ``ids``."""
    payload = channels.parse_progress(raw)
    if payload is None:
        return False
    if "ids" in payload:
        return bool(ids.intersection(payload["ids"]))  # type: ignore[typeddict-item]
    return payload["id"] in ids  # type: ignore[typeddict-item]
