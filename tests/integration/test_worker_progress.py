"""The progress throttle and the handler context, in-process with a fake clock."""

from __future__ import annotations

import pytest

from bgjobs.tasks.context import JobCancelled, JobContext, ProgressThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(clock: Clock) -> tuple[ProgressThrottle, list[dict]]:
    sent: list[dict] = []
    return ProgressThrottle(sent.append, clock), sent


def test_a_tight_loop_of_100000_calls_writes_a_handful_and_keeps_the_final_state():
    clock = Clock()
    throttle, sent = make(clock)
    ctx = JobContext("j", "t", {}, 1, throttle, set())
    for i in range(100_000):
        ctx.progress(i + 1, 100_000)
        clock.now += 0.000001  # 0.1 s in all, about what the real loop takes
    assert 1 <= len(sent) <= 3
    assert throttle.unsent() == {"current": 100_000, "total": 100_000}


def test_writes_about_once_a_second_when_progress_creeps():
    clock = Clock()
    throttle, sent = make(clock)
    for i in range(1000):  # 0.01% per call, 10 calls a second: 100 seconds
        throttle.update({"current": i, "total": 10_000_000})
        clock.now += 0.1
    assert 90 <= len(sent) <= 101


def test_a_one_percent_step_writes_sooner_but_not_more_than_ten_times_a_second():
    clock = Clock()
    throttle, sent = make(clock)
    for i in range(100):
        throttle.update({"current": i, "total": 100})
        clock.now += 0.2
    assert len(sent) == 100  # every 1% step, 5 per second
    clock2 = Clock()
    throttle2, sent2 = make(clock2)
    for i in range(100):
        throttle2.update({"current": i, "total": 100})
        clock2.now += 0.01  # 1% per 10 ms: capped at 10 writes a second
    assert 9 <= len(sent2) <= 11


def test_stage_changes_are_written_and_repeats_are_not():
    clock = Clock()
    throttle, sent = make(clock)
    throttle.update({"current": 0, "total": None, "stage": "loading"})
    throttle.update({"current": 0, "total": None, "stage": "computing"})
    clock.now += 5
    throttle.update({"current": 0, "total": None, "stage": "computing"})
    assert [s["stage"] for s in sent] == ["loading", "computing"]
    assert throttle.unsent() is None


def test_progress_and_check_raise_once_cancelled():
    cancelled: set[str] = set()
    throttle, sent = make(Clock())
    ctx = JobContext("j", "t", {"a": 1}, 2, throttle, cancelled)
    ctx.progress(1, 10, stage="x", ticker="AB")
    assert sent == [{"current": 1, "total": 10, "stage": "x", "ticker": "AB"}]
    assert not ctx.cancelled()
    cancelled.add("j")
    assert ctx.cancelled()
    with pytest.raises(JobCancelled):
        ctx.progress(2, 10)
    with pytest.raises(JobCancelled):
        ctx.check_cancelled()
