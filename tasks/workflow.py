"""``bgjobs.workflow()``: build jobs that wait for each other in one transaction.

    with bgjobs.workflow(user_id=7) as wf:
        a = wf.enqueue("extract", {...})
        group = wf.enqueue_many("transform", [{...}, {...}], after=[a])
        wf.enqueue("load", {...}, after=group)
    bgjobs.wait_workflow(wf.id)

Every job gets the workflow's id; one statement per call (so one per level of the graph);
nothing is visible to workers until the block ends, and an exception in it enqueues nothing.
See docs/workflows.md.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from uuid import UUID

import psycopg

from bgjobs.core.errors import NotFound
from bgjobs.core.jobs import Job, Workflow, parse_job_id
from bgjobs.core.store import Store
from bgjobs.tasks import enqueue as enqueue_mod


class WorkflowBuilder:
    """Enqueues into one workflow, on one connection (one transaction)."""

    def __init__(self, workflow_id: UUID, user_id: int | None, conn: psycopg.Connection,
                 store: Store) -> None:
        self.id = workflow_id
        self.user_id = user_id
        self.jobs: list[Job] = []
        self._conn = conn
        self._store = store

    def enqueue(self, job_type: str, params: dict[str, Any] | None = None, *,
                after: Sequence[Job | UUID | str] | None = None, **options: Any) -> Job:
        """``bgjobs.enqueue`` into this workflow (priority, run_after, ... as there)."""
        job = enqueue_mod.enqueue(job_type, params, user_id=self.user_id, after=after,
                                  workflow_id=self.id, conn=self._conn, store=self._store,
                                  **options)
        self.jobs.append(job)
        return job

    def enqueue_many(self, job_type: str, params_list: Sequence[dict[str, Any] | None], *,
                     after: Sequence[Job | UUID | str] | None = None,
                     run_if_dependency_fails: bool = False) -> list[Job]:
        """``bgjobs.enqueue_many`` into this workflow: a group, in one statement."""
        jobs = enqueue_mod.enqueue_many(job_type, params_list, user_id=self.user_id,
                                        after=after,
                                        run_if_dependency_fails=run_if_dependency_fails,
                                        workflow_id=self.id, conn=self._conn,
                                        store=self._store)
        self.jobs.extend(jobs)
        return jobs


@contextmanager
def workflow(*, user_id: int | None = None, workflow_id: UUID | None = None,
             conn: psycopg.Connection | None = None,
             store: Store | None = None) -> Iterator[WorkflowBuilder]:
    """A builder whose jobs commit together at the end of the block (or with ``conn``'s
    transaction, when given: the caller commits)."""
    store = store or enqueue_mod.default_store()
    workflow_id = workflow_id or uuid.uuid4()
    if conn is not None:
        yield WorkflowBuilder(workflow_id, user_id, conn, store)
        return
    with store.connection() as pooled, pooled.transaction():
        yield WorkflowBuilder(workflow_id, user_id, pooled, store)


def get_workflow(workflow_id: UUID | str, *, user_id: int | None = None,
                 store: Store | None = None) -> Workflow | None:
    """The workflow (its counts, the job that failed first, its jobs), or None if it has no
    jobs (or, with ``user_id``, none of that user's)."""
    try:
        return (store or enqueue_mod.default_store()).get_workflow(parse_job_id(workflow_id),
                                                                   user_id)
    except NotFound:
        return None
