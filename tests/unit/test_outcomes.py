"""One outcome type per state change: what the child makes is what the outbox holds and the
store writes (core/jobs.py), fenced on the attempt its JobSpec named, with UUID job ids."""

from __future__ import annotations

import selectors
import uuid
from typing import Any

from bgjobs.core.jobs import Attempt, Completion, Failure, ProgressUpdate
from bgjobs.tasks.registry import Task
from bgjobs.worker import protocol
from bgjobs.worker.child_main import Child
from bgjobs.worker.fleet import Fleet
from bgjobs.worker.outbox import Outbox, Running


class FakeConn:
    def __init__(self) -> None:
        self.sent: list[Any] = []

    def send(self, msg: Any) -> None:
        self.sent.append(msg)


class FakeChild:
    pid = 4242
    io: dict[str, int] = {}  # a process-per-job child

    def __init__(self) -> None:
        self.jobs: dict[uuid.UUID, None] = {}


def job_id(ctx: Any) -> Any:
    return {"id": str(ctx.job_id), "uuid": isinstance(ctx.job_id, uuid.UUID)}


def fail(ctx: Any) -> Any:
    raise RuntimeError("no")


def test_the_child_makes_the_outcomes_the_store_writes():
    child = Child(FakeConn(), {"ok": Task("ok", job_id), "no": Task("no", fail)})
    ok, no = uuid.uuid4(), uuid.uuid4()
    child.run_one(protocol.JobSpec(ok, "ok", {}, 2, worker_id="host:7"))
    child.run_one(protocol.JobSpec(no, "no", {}, 1, worker_id="host:7"))
    child.flush()
    done, failed = child.conn.sent  # earlier completions are flushed before a failure
    assert type(failed) is Failure and failed.attempt == Attempt(no, "host:7", 1)
    [completion] = done.finished
    assert type(completion) is Completion and completion.attempt == Attempt(ok, "host:7", 2)
    assert completion.result == {"id": str(ok), "uuid": True}  # ctx.job_id: the job's UUID


def test_the_outbox_holds_the_childs_outcome_as_made():
    outbox = Outbox()
    fleet = Fleet(selectors.DefaultSelector(), outbox, 1, 10.0, 100, "INFO")
    child = FakeChild()
    attempt = Attempt(uuid.uuid4(), "host:7", 1)
    r = Running(attempt, "noop", 3, 2, child, 0.0)  # type: ignore[arg-type]
    fleet.running[r.id] = r
    child.jobs[r.id] = None
    fleet._on_message(child, protocol.Progress(r.id, {"current": 1}))  # type: ignore[arg-type]
    assert outbox.progress[r.id] == (r, ProgressUpdate(attempt, {"current": 1}))
    done = Completion(attempt, {"ok": 1}, {"current": 2}, 0.01)
    fleet._on_message(child, protocol.Done([done]))  # type: ignore[arg-type]
    assert outbox.done == [(r, done)] and outbox.done[0][1] is done
    assert r.id not in fleet.running and not child.jobs
