"""The supervisor stops a handler on control news about its attempt, and only then."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from bgjobs.core.channels import CONTROL, NEW
from bgjobs.core.jobs import Attempt
from bgjobs.worker import protocol
from bgjobs.worker.outbox import Running
from bgjobs.worker.supervisor import Settings, Supervisor


class FakeChild:
    pid = 4242

    def __init__(self) -> None:
        self.sent: list[Any] = []

    def send(self, msg: Any) -> bool:
        self.sent.append(msg)
        return True


class FakeListener:
    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def drain(self) -> list[tuple[str, str]]:
        items, self.items = self.items, []
        return items

    def close(self) -> None:
        pass


@pytest.fixture
def supervisor() -> Iterator[Supervisor]:
    sup = Supervisor("postgresql://nowhere.invalid/none", Settings(concurrency=1,
                                                                   types=("noop",)))
    sup.listener = FakeListener()  # type: ignore[assignment]
    try:
        yield sup
    finally:
        sup.writer.close()
        sup.selector.close()


def running(sup: Supervisor, attempt: int) -> tuple[Running, FakeChild]:
    job_id = uuid.uuid4()
    child = FakeChild()
    r = Running(Attempt(job_id, sup.worker_id, attempt), "noop", 3, 2,
                child, 0.0)  # type: ignore[arg-type]
    sup.fleet.running[r.id] = r
    return r, child


def notify(sup: Supervisor, *items: tuple[str, str]) -> None:
    sup.listener.items.extend(items)  # type: ignore[attr-defined]
    sup._on_notify()


def test_news_of_our_attempt_stops_its_handler(supervisor):
    r, child = running(supervisor, attempt=2)
    notify(supervisor, (CONTROL, json.dumps({"id": str(r.id), "attempt": 2})))
    assert child.sent == [protocol.Cancel(r.id)] and r.cancel_deadline is not None


def test_news_of_an_older_attempt_or_another_job_changes_nothing(supervisor):
    r, child = running(supervisor, attempt=2)
    notify(supervisor, (CONTROL, json.dumps({"id": str(r.id), "attempt": 1})),
           (CONTROL, json.dumps({"id": str(uuid.uuid4()), "attempt": 2})),
           (CONTROL, "not json"))
    assert child.sent == [] and r.cancel_deadline is None


def test_new_jobs_of_our_types_wake_the_claim(supervisor):
    supervisor.wake = False
    notify(supervisor, (NEW, "other"))
    assert not supervisor.wake
    notify(supervisor, (NEW, "noop"))
    assert supervisor.wake
