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
import pkgutil
from typing import TYPE_CHECKING, Any

# In a checkout, the folder bgjobs/ holds only the top of the package (core/, tasks/, ... sit
# beside it, docs/architecture.md), and a script run from the checkout finds that folder
# first. The editable install's link tree holds the whole package: add it to this package's
# path, as Python's own pkgutil-style namespace packages do. Installed, it adds nothing.
__path__ = pkgutil.extend_path(__path__, __name__)

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

#: The public names: ``_EXPORTS`` says where each lives; the TYPE_CHECKING block below says the
#: same for type checkers and editors (tests/unit/test_layers.py checks that the two agree).
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # `name as name`: re-exported, for type checkers and editors
    from bgjobs.core.errors import BgjobsError as BgjobsError
    from bgjobs.core.errors import Conflict as Conflict
    from bgjobs.core.errors import DatabaseUnavailable as DatabaseUnavailable
    from bgjobs.core.errors import InvalidInput as InvalidInput
    from bgjobs.core.errors import NotFound as NotFound
    from bgjobs.core.jobs import Job as Job
    from bgjobs.core.jobs import Status as Status
    from bgjobs.core.jobs import Workflow as Workflow
    from bgjobs.tasks.context import JobCancelled as JobCancelled
    from bgjobs.tasks.context import JobContext as JobContext
    from bgjobs.tasks.enqueue import InvalidRequest as InvalidRequest
    from bgjobs.tasks.enqueue import cancel as cancel
    from bgjobs.tasks.enqueue import configure as configure
    from bgjobs.tasks.enqueue import enqueue as enqueue
    from bgjobs.tasks.enqueue import enqueue_many as enqueue_many
    from bgjobs.tasks.enqueue import get_job as get_job
    from bgjobs.tasks.registry import InvalidParams as InvalidParams
    from bgjobs.tasks.registry import NonRetryable as NonRetryable
    from bgjobs.tasks.registry import Param as Param
    from bgjobs.tasks.registry import UnknownTask as UnknownTask
    from bgjobs.tasks.registry import task as task
    from bgjobs.tasks.wait import WaitTimeout as WaitTimeout
    from bgjobs.tasks.wait import wait as wait
    from bgjobs.tasks.wait import wait_workflow as wait_workflow
    from bgjobs.tasks.workflow import get_workflow as get_workflow
    from bgjobs.tasks.workflow import workflow as workflow


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'bgjobs' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
