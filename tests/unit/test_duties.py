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


class BrokenStore:
    """A store whose claim and sync raise (a bug, not an outage)."""

    def limited_types(self) -> dict[str, float | None]:
        return {}

    def claim_specs(self, *args: object, **kw: object) -> list[object]:
        raise RuntimeError("claim bug")

    def sync_job_types(self, types: object) -> None:
        raise RuntimeError("sync bug")


class OneSlot:
    running: dict[object, object] = {}
    io_types: dict[str, int] = {}

    def capacity(self) -> dict[str, int]:
        return {"child": 1}


def test_a_failing_claim_waits_its_interval_though_woken(caplog):
    from bgjobs.worker.duties.claiming import Claimer
    from bgjobs.worker.wakeups import Wakeups

    claimer = Claimer(BrokenStore(), OneSlot(), Wakeups(True), "w",  # type: ignore[arg-type]
                      lambda: ("noop",), lambda: 0, poll_interval=5.0, lease=30,
                      backlog_limit=100)
    with caplog.at_level(logging.ERROR):
        run_due([claimer], 100.0)
    assert "claiming failed; retrying later (in 5.0s)" in caplog.text
    claimer.wake = True  # a notification: still no claim before the retry is due
    assert not claimer.due(101.0) and claimer.wake_at(101.0) == 105.0
    assert claimer.due(105.0)


def test_a_failing_registry_sync_is_retried_and_nothing_counts_it_done(caplog):
    from bgjobs.worker.duties.registry_sync import RegistrySync

    sync = RegistrySync(BrokenStore(), "UTC", retry_interval=5.0)  # type: ignore[arg-type]
    with caplog.at_level(logging.ERROR):
        run_due([sync], 100.0)
    assert "registry sync failed" in caplog.text and "sync bug" in caplog.text
    assert not sync.done and not sync.due(104.0) and sync.due(105.0)


def test_job_heartbeats_start_one_interval_after_the_machine_gets_busy():
    from bgjobs.worker.duties.lease import LeaseHeartbeats
    from bgjobs.worker.outbox import Outbox

    fleet, outbox = OneSlot(), Outbox()
    fleet.running = {}
    lease = LeaseHeartbeats(fleet, outbox, 10.0)  # type: ignore[arg-type]
    assert not lease.due(100.0) and lease.wake_at(100.0) is None
    fleet.running = {"job": "r"}  # a claim: the claim itself set the jobs' heartbeat
    assert lease.wake_at(100.0) == 110.0 and not lease.due(100.0)
    run_due([lease], 110.0)
    assert outbox.heartbeat == ["r"] and lease.next_at == 120.0
