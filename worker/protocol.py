"""Messages between a supervisor and its child processes: small pickled named tuples.

Supervisor -> child: Jobs, Cancel, Drop.
Child -> supervisor: Hello, Progress, Done, Failed, Cancelled, Dropped.
Both sides run the same installed bgjobs, so a message is its class and its fields.
"""

from __future__ import annotations

from typing import Any, NamedTuple


class JobSpec(NamedTuple):
    """One job handed to a child."""

    job_id: str
    job_type: str
    params: dict[str, Any]
    attempt: int
    #: results of the jobs it waited for, by id (workflows)
    dependencies: dict[str, Any] | None = None


# Supervisor -> child ---------------------------------------------------------------------


class Jobs(NamedTuple):
    """Run these, in order, after what you already hold."""

    specs: list[JobSpec]


class Cancel(NamedTuple):
    """Stop this job's handler (or drop it if it has not started)."""

    job_id: str


class Drop(NamedTuple):
    """Shutting down: give back every job you have not started."""


# Child -> supervisor ---------------------------------------------------------------------


class Hello(NamedTuple):
    """The child is ready and runs these job types."""

    pid: int
    task_names: list[str]


class Progress(NamedTuple):
    job_id: str
    state: dict[str, Any]


class Finished(NamedTuple):
    """One job that completed."""

    job_id: str
    result: Any
    #: the handler's last progress if it was never sent, else None
    progress: dict[str, Any] | None
    duration: float


class Done(NamedTuple):
    """Jobs that completed since the last report (sent in batches)."""

    finished: list[Finished]


class Failed(NamedTuple):
    """A job whose handler raised."""

    job_id: str
    error: dict[str, Any]
    retryable: bool
    #: seconds before the retry (the task's backoff rule)
    delay: float
    traceback: str
    duration: float
    progress: dict[str, Any] | None


class Cancelled(NamedTuple):
    """A cancelled job stopped: after ``duration`` seconds, or None if it never started."""

    job_id: str
    duration: float | None


class Dropped(NamedTuple):
    """Jobs given back unstarted (answer to Drop)."""

    job_ids: list[str]


ToChild = Jobs | Cancel | Drop
FromChild = Hello | Progress | Done | Failed | Cancelled | Dropped
