"""bgjobs: Postgres-native background jobs for Python web apps, with live progress.

The public API for host code::

    import bgjobs

    @bgjobs.task("report", params={"account": bgjobs.Param(int, required=True)})
    def report(ctx): ...

    job = bgjobs.enqueue("report", {"account": 7}, user_id=current_user.id)
    bgjobs.get_job(job.id)      # a bgjobs.Job, or None
    bgjobs.cancel(job.id)
    bgjobs.wait(job.id, timeout=60)   # the finished Job, woken by NOTIFY

Names load on first use, so a worker process that imports ``bgjobs.worker`` pays for nothing
here. See docs/tasks.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "task": "bgjobs.tasks.registry",
    "Param": "bgjobs.tasks.registry",
    "NonRetryable": "bgjobs.tasks.registry",
    "UnknownTask": "bgjobs.tasks.registry",
    "InvalidParams": "bgjobs.tasks.registry",
    "JobContext": "bgjobs.tasks.context",
    "JobCancelled": "bgjobs.tasks.context",
    "enqueue": "bgjobs.tasks.enqueue",
    "enqueue_many": "bgjobs.tasks.enqueue",
    "get_job": "bgjobs.tasks.enqueue",
    "cancel": "bgjobs.tasks.enqueue",
    "configure": "bgjobs.tasks.enqueue",
    "wait": "bgjobs.tasks.wait",
    "wait_workflow": "bgjobs.tasks.wait",
    "workflow": "bgjobs.tasks.workflow",
    "get_workflow": "bgjobs.tasks.workflow",
    "Workflow": "bgjobs.core.jobs",
    "WaitTimeout": "bgjobs.tasks.wait",
    "InvalidRequest": "bgjobs.tasks.enqueue",
    "Job": "bgjobs.core.jobs",
    "Status": "bgjobs.core.jobs",
    "BgjobsError": "bgjobs.core.errors",
    "NotFound": "bgjobs.core.errors",
    "Conflict": "bgjobs.core.errors",
    "InvalidInput": "bgjobs.core.errors",
    "DatabaseUnavailable": "bgjobs.core.errors",
}

__all__ = [
    "BgjobsError", "Conflict", "DatabaseUnavailable", "InvalidInput", "InvalidParams",
    "InvalidRequest", "Job", "JobCancelled", "JobContext", "NonRetryable", "NotFound", "Param",
    "Status", "UnknownTask", "WaitTimeout", "Workflow", "cancel", "configure", "enqueue",
    "enqueue_many", "get_job", "get_workflow", "task", "wait", "wait_workflow", "workflow",
]

if TYPE_CHECKING:
    from bgjobs.core.errors import (
        BgjobsError,
        Conflict,
        DatabaseUnavailable,
        InvalidInput,
        NotFound,
    )
    from bgjobs.core.jobs import Job, Status, Workflow
    from bgjobs.tasks.context import JobCancelled, JobContext
    from bgjobs.tasks.enqueue import (
        InvalidRequest,
        cancel,
        configure,
        enqueue,
        enqueue_many,
        get_job,
    )
    from bgjobs.tasks.registry import InvalidParams, NonRetryable, Param, UnknownTask, task
    from bgjobs.tasks.wait import WaitTimeout, wait, wait_workflow
    from bgjobs.tasks.workflow import get_workflow, workflow


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'bgjobs' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
