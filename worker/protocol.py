"""Messages between a supervisor and its child processes: small pickled named tuples.

Supervisor -> child: Jobs, Cancel, Drop.
Child -> supervisor: Hello, Progress (or ProgressMany), Done, Failed, Cancelled, Dropped.
A completion and a failure travel as the outcome types the store writes (core/jobs.py):
the child makes them once, fenced on the attempt its JobSpec names. Progress travels as the
handler's report; the supervisor keeps the latest per job and writes that. Job ids are UUIDs.
Both sides run the same installed bgjobs, so a message is its class and its fields.
"""

from __future__ import annotations

from typing import Any, NamedTuple
from uuid import UUID

from bgjobs.core.jobs import Attempt, Completion, Failure


class JobSpec(NamedTuple):
    """One job handed to a child."""

    job_id: UUID
    job_type: str
    params: dict[str, Any]
    attempt: int
    #: results of the jobs it waited for, by id (workflows)
    dependencies: dict[str, Any] | None = None
    #: the supervisor that claimed it: with the id and the attempt, what fences its outcome
    worker_id: str = ""

    def fence(self) -> Attempt:
        return Attempt(self.job_id, self.worker_id, self.attempt)


# Supervisor -> child ---------------------------------------------------------------------


class Jobs(NamedTuple):
    """Run these, in order, after what you already hold."""

    specs: list[JobSpec]


class Cancel(NamedTuple):
    """Stop this job's handler (or drop it if it has not started)."""

    job_id: UUID


class Drop(NamedTuple):
    """Shutting down: give back every job you have not started."""


# Child -> supervisor ---------------------------------------------------------------------


class Hello(NamedTuple):
    """The child is ready and runs these job types."""

    pid: int
    task_names: list[str]


class Progress(NamedTuple):
    job_id: UUID
    state: dict[str, Any]


class ProgressMany(NamedTuple):
    """Progress of many jobs at once (an IO process's reports, sent in batches)."""

    updates: list[Progress]


class Done(NamedTuple):
    """Jobs that completed since the last report (sent in batches)."""

    finished: list[Completion]


#: A job whose handler raised.
Failed = Failure


class Cancelled(NamedTuple):
    """A cancelled job stopped: after ``duration`` seconds, or None if it never started."""

    job_id: UUID
    duration: float | None


class Dropped(NamedTuple):
    """Jobs given back unstarted (answer to Drop)."""

    job_ids: list[UUID]


ToChild = Jobs | Cancel | Drop
FromChild = Hello | Progress | ProgressMany | Done | Failure | Cancelled | Dropped
