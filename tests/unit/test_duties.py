"""The duty runner: a duty that raises is logged and retried after its interval, the others
still run, an outage goes up; and the worker fixtures' reading of tracebacks in a log."""

from __future__ import annotations

import logging

import pytest

from bgjobs.core.errors import DatabaseUnavailable
from bgjobs.worker.duties import Duty, run_due
from tests.procs import unexpected_tracebacks


class Counting(Duty):
    name = "counting"

    def __init__(self, interval: float, error: Exception | None = None,
                 name: str = "counting") -> None:
        super().__init__(interval)
        self.name = name
        self.runs = 0
        self.error = error

    def run_once(self, now: float) -> None:
        self.runs += 1
        if self.error is not None:
            raise self.error


def test_a_duty_runs_when_due_then_after_its_interval():
    duty = Counting(10.0)
    run_due([duty], 100.0)
    run_due([duty], 105.0)
    assert duty.runs == 1 and duty.next_at == 110.0
    run_due([duty], 110.0)
    assert duty.runs == 2


def test_a_failing_duty_is_logged_and_skipped_and_the_others_run(caplog):
    broken, fine = Counting(5.0, RuntimeError("a bug")), Counting(5.0)
    with caplog.at_level(logging.ERROR, logger="bgjobs.worker.duties"):
        run_due([broken, fine], 100.0)
    assert fine.runs == 1 and broken.next_at == 105.0
    assert "counting failed; retrying later (in 5.0s)" in caplog.text and "a bug" in caplog.text


def test_a_side_loop_logs_its_bug_and_lets_outages_through(caplog):
    with caplog.at_level(logging.ERROR):
        run_due([Counting(60.0, KeyError("a bug"), "periodic jobs")], 0.0)
    assert "periodic jobs failed; retrying later" in caplog.text
    with pytest.raises(DatabaseUnavailable):
        run_due([Counting(60.0, DatabaseUnavailable("down"), "retention")], 0.0)


def test_a_halted_duty_is_never_due():
    duty = Counting(5.0)
    duty.halt()
    run_due([duty], 1e9)
    assert duty.runs == 0


RECORD = "2026-12-05 08:00:00,123 [42] {level} {logger}: {message}"
TRACE = "Traceback (most recent call last):\n  File \"x.py\", line 1, in f\nRuntimeError: boom"


def test_a_failed_jobs_traceback_is_expected_any_other_is_not():
    failed_job = RECORD.format(level="WARNING", logger="bgjobs.worker.outbox",
                               message="job 1f (fail, attempt 1/3) failed after 0.001s: "
                                       "RuntimeError: boom; retrying in 0.20s")
    duty_bug = RECORD.format(level="ERROR", logger="bgjobs.worker.duties",
                             message="retention failed; retrying in 60.0s")
    fine = RECORD.format(level="INFO", logger="bgjobs.worker.fleet", message="ready")
    assert unexpected_tracebacks("\n".join([fine, failed_job, TRACE, fine])) == []
    found = unexpected_tracebacks("\n".join([failed_job, TRACE, duty_bug, TRACE, fine]))
    assert len(found) == 1 and found[0].startswith(duty_bug)
    assert len(unexpected_tracebacks(TRACE)) == 1  # outside any record: uncaught
