"""A worker child's job loop in-process (no database): the outcome it reports for each kind of
handler, as the protocol's named messages."""

from __future__ import annotations

import math
from typing import Any

import pytest

from bgjobs.tasks.registry import NonRetryable, Param, Task
from bgjobs.worker import protocol
from bgjobs.worker.child_main import Child


class FakeConn:
    def __init__(self) -> None:
        self.sent: list[Any] = []

    def send(self, msg: Any) -> None:
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


def spec(job_id: str, job_type: str, params: dict | None = None, attempt: int = 1):
    return protocol.JobSpec(job_id, job_type, params or {}, attempt)


def sent(child: Child, kind: type) -> list[Any]:
    return [m for m in child.conn.sent if isinstance(m, kind)]


def test_success_reports_result_with_defaults_and_final_progress(child):
    child.run_one(spec("j1", "ok", attempt=2))
    child.flush()
    progress = sent(child, protocol.Progress)
    assert progress[0] == protocol.Progress("j1", {"current": 1, "total": 1000, "stage": "work"})
    [done] = sent(child, protocol.Done)
    [finished] = done.finished
    assert (finished.job_id, finished.result) == ("j1", {"n": 3, "attempt": 2})
    assert finished.progress in (None, {"current": 1000, "total": 1000, "stage": "work"})
    if finished.progress is None:  # then the last write was the final state itself
        assert progress[-1].state["current"] == 1000
    assert finished.duration >= 0


def test_failure_is_retryable_with_the_tasks_backoff(child):
    child.run_one(spec("j1", "boom"))
    child.run_one(spec("j2", "boom", attempt=3))
    first, third = child.conn.sent
    assert isinstance(first, protocol.Failed) and first.job_id == "j1" and first.retryable
    assert first.error == {"error": "RuntimeError", "message": "boom"}
    # retry_delay=1.0: 1 s after the first attempt, 4 s after the third, each +0-25% jitter
    assert 1.0 <= first.delay <= 1.25 and 4.0 <= third.delay <= 5.0
    assert "Traceback" in first.traceback and "boom" in first.traceback


@pytest.mark.parametrize("job_type,params,error", [
    ("fatal", {}, "NonRetryable"),
    ("nan", {}, "BadOutput"),
    ("ok", {"n": "three"}, "InvalidParams"),
    ("unknown", {}, "NonRetryable"),
])
def test_errors_that_are_not_retried(child, job_type, params, error):
    child.run_one(spec("j", job_type, params))
    [msg] = child.conn.sent
    assert isinstance(msg, protocol.Failed) and msg.error["error"] == error and not msg.retryable


def test_cancelled_before_start_and_while_running(child):
    child.cancelled.add("j1")
    child.run_one(spec("j1", "ok"))
    assert child.conn.sent == [protocol.Cancelled("j1", None)]
    child.conn.sent.clear()

    def stop_midway(ctx):
        ctx.progress(1, 2)
        child.cancelled.add(ctx.job_id)
        ctx.progress(2, 2)
        raise AssertionError("not reached")

    child.tasks["mid"] = Task("mid", stop_midway)
    child.run_one(spec("j2", "mid"))
    assert [type(m) for m in child.conn.sent] == [protocol.Progress, protocol.Cancelled]
    assert child.conn.sent[-1].duration is not None and "j2" not in child.cancelled


def test_cancel_and_drop_messages_take_queued_jobs_back(child):
    child.handle(protocol.Jobs([spec("a", "ok"), spec("b", "ok"), spec("c", "ok")]))
    child.handle(protocol.Cancel("b"))
    assert child.conn.sent == [protocol.Cancelled("b", None)]
    child.handle(protocol.Drop())
    assert child.conn.sent[-1] == protocol.Dropped(["a", "c"])
    assert not child.queue


@pytest.mark.parametrize("value", [
    {"current": 3, "total": 10, "stage": "reading", "ok": True, "eta": 1.5, "note": None},
    {"stage": "bad\x00"}, {"bad\x00": 1}, {"eta": float("nan")}, {"eta": float("inf")},
    {1: "int key"}, {"nested": {"a": 1}}, {"items": [1, 2]}, {"when": object()}, [1, 2], {},
])
def test_the_quick_storable_check_agrees_with_encoding(value):
    from bgjobs.core.jobs import unstorable
    from bgjobs.worker.child_main import _check_storable, _flat_storable

    if _flat_storable(value):
        assert unstorable(value) is None
    try:
        _check_storable(value, "progress")
    except Exception:  # noqa: BLE001
        assert unstorable(value) is not None
    else:
        assert unstorable(value) is None
