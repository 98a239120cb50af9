"""A worker child's job loop in-process: outcomes it reports for each kind of handler."""

from __future__ import annotations

import math
from typing import Any

import pytest

from worker import protocol
from worker.child import Child
from worker.registry import NonRetryable, Param, Task


class FakeConn:
    def __init__(self) -> None:
        self.sent: list[tuple[Any, ...]] = []

    def send(self, msg: tuple[Any, ...]) -> None:
        self.sent.append(msg)


def handler_ok(ctx):
    for i in range(1000):
        ctx.progress(i + 1, 1000, stage="work")
    return {"n": ctx.params["n"], "attempt": ctx.attempt}


def handler_boom(ctx):
    raise RuntimeError("boom")


def handler_fatal(ctx):
    raise NonRetryable("no")


def handler_nan(ctx):
    return {"x": math.nan}


TASKS = {
    "ok": Task("ok", handler_ok, {"n": Param(int, default=3)}),
    "boom": Task("boom", handler_boom, retry_delay=1.0),
    "fatal": Task("fatal", handler_fatal),
    "nan": Task("nan", handler_nan),
}


@pytest.fixture
def child() -> Child:
    return Child(FakeConn(), TASKS)  # type: ignore[arg-type]


def test_success_reports_result_with_defaults_and_final_progress(child):
    child.run_one(("j1", "ok", {}, 2))
    child.flush()
    progress = [m for m in child.conn.sent if m[0] == protocol.PROGRESS]
    assert progress[0] == (protocol.PROGRESS, "j1", {"current": 1, "total": 1000, "stage": "work"})
    [(kind, [(job_id, result, final, duration)])] = [m for m in child.conn.sent
                                                    if m[0] == protocol.DONE]
    assert (job_id, result) == ("j1", {"n": 3, "attempt": 2})
    assert final in (None, {"current": 1000, "total": 1000, "stage": "work"})
    if final is None:  # then the last write was the final state itself
        assert progress[-1][2]["current"] == 1000
    assert duration >= 0


def test_failure_is_retryable_with_exponential_delay(child):
    child.run_one(("j1", "boom", {}, 1))
    child.run_one(("j2", "boom", {}, 3))
    (_, id1, err, retryable, d1, tb, _, _), (_, _, _, _, d3, _, _, _) = child.conn.sent
    assert id1 == "j1" and err == {"error": "RuntimeError", "message": "boom"} and retryable
    assert 1.0 <= d1 <= 1.25 and 4.0 <= d3 <= 5.0
    assert "Traceback" in tb and "boom" in tb


@pytest.mark.parametrize("job_type,params,error", [
    ("fatal", {}, "NonRetryable"),
    ("nan", {}, "BadOutput"),
    ("ok", {"n": "three"}, "InvalidParams"),
    ("unknown", {}, "NonRetryable"),
])
def test_errors_that_are_not_retried(child, job_type, params, error):
    child.run_one(("j", job_type, params, 1))
    [msg] = child.conn.sent
    assert msg[0] == protocol.FAILED and msg[2]["error"] == error and msg[3] is False


def test_cancelled_before_start_and_while_running(child):
    child.cancelled.add("j1")
    child.run_one(("j1", "ok", {}, 1))
    assert child.conn.sent == [(protocol.CANCELLED, "j1", None)]
    child.conn.sent.clear()

    def stop_midway(ctx):
        ctx.progress(1, 2)
        child.cancelled.add(ctx.job_id)
        ctx.progress(2, 2)
        raise AssertionError("not reached")

    child.tasks["mid"] = Task("mid", stop_midway)
    child.run_one(("j2", "mid", {}, 1))
    assert [m[0] for m in child.conn.sent] == [protocol.PROGRESS, protocol.CANCELLED]
    assert child.conn.sent[-1][2] is not None and "j2" not in child.cancelled


def test_cancel_and_drop_messages_take_queued_jobs_back(child):
    child.handle((protocol.JOBS, [("a", "ok", {}, 1), ("b", "ok", {}, 1), ("c", "ok", {}, 1)]))
    child.handle((protocol.CANCEL, "b"))
    assert child.conn.sent == [(protocol.CANCELLED, "b", None)]
    child.handle((protocol.DROP,))
    assert child.conn.sent[-1] == (protocol.DROPPED, ["a", "c"])
    assert not child.queue
