"""Declaring concurrent (IO-bound) tasks, and the worker's flags for them (no database)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from typing import Any

import pytest

from bgjobs.tasks import registry
from bgjobs.tasks.registry import BadDeclaration, task
from bgjobs.worker.main import parser


@pytest.fixture
def declared() -> Iterator[list[str]]:
    """Names registered by the test, unregistered after it (workers must not see them)."""
    names: list[str] = []
    yield names
    for name in names:
        registry._TASKS.pop(name, None)


@pytest.mark.parametrize("bad", [0, -1, 10_001, 2.5, "5", True])
def test_concurrency_must_be_a_whole_number_from_1_to_10000(bad: Any):
    with pytest.raises(BadDeclaration, match=r"task 'unit_io_bad': concurrency \(its jobs one "
                                             r"process runs at once\) must be a whole number "
                                             r"from 1 to 10000, got "):
        task("unit_io_bad", concurrency=bad)


def test_nothing_is_registered_by_a_refused_declaration():
    with pytest.raises(BadDeclaration):
        task("unit_io_refused", concurrency=0)(lambda ctx: None)
    assert "unit_io_refused" not in registry._TASKS


def test_async_and_concurrent_declarations(declared: list[str]):
    async def io(ctx: Any) -> None: ...

    def cpu(ctx: Any) -> None: ...

    for name, kw, handler, expected in [
        ("unit_io_async", {}, io, registry.DEFAULT_CONCURRENCY),  # async: concurrent by default
        ("unit_io_async_5", {"concurrency": 5}, io, 5),
        ("unit_io_threads", {"concurrency": 10_000}, cpu, 10_000),  # plain def: threads
        ("unit_io_cpu", {}, cpu, None),  # as before: a process per job
    ]:
        declared.append(name)
        task(name, **kw)(handler)
        assert registry.get(name).io_concurrency == expected, name


def test_worker_flags():
    ns = parser().parse_args([])
    assert ns.io_processes is None and ns.block_threshold == 0.1
    ns = parser().parse_args(["--io-processes", "0", "--block-threshold", "250ms"])
    assert ns.io_processes == 0 and ns.block_threshold == 0.25
    with pytest.raises(SystemExit):
        parser().parse_args(["--io-processes", "-1"])


def test_bad_io_processes_says_why():
    from bgjobs.worker.main import whole_number

    with pytest.raises(argparse.ArgumentTypeError, match="must be 0 or more"):
        whole_number("-1")


class QueueStore:
    """Pending jobs by type; claims take from them (the claim statement's effect, no SQL)."""

    def __init__(self, pending: dict[str, int]) -> None:
        self.pending = pending
        self.claims: list[tuple[tuple[str, ...], int, int]] = []

    def claim_specs(self, worker_id: str, types: Any, *, limit: int,
                    lease_seconds: int) -> list[Any]:
        got = []
        for t in types:
            n = min(limit - len(got), self.pending.get(t, 0))
            self.pending[t] = self.pending.get(t, 0) - n
            got += [t] * n
        self.claims.append((tuple(types), limit, len(got)))
        return got

    def next_due_in(self, types: Any, claim_age: float = 0.0) -> None:
        return None

    def limited_types(self) -> dict[str, Any]:
        return {}


class IoFleet:
    """One process slot (free) and an IO process that runs two 'io' jobs at once."""

    io_types = {"io": 2}
    running: dict[object, object] = {}

    def __init__(self) -> None:
        self.io_free = 2

    def capacity(self) -> dict[str, int]:
        return {"proc": 1}

    def io_capacity(self, job_type: str, hand_ahead: bool = True) -> dict[str, int]:
        return {"io": self.io_free} if self.io_free else {}

    def hand_out(self, jobs: list[Any], capacity: dict[str, int], worker_id: str) -> None:
        if "io" in capacity:
            self.io_free -= len(jobs)


def test_an_empty_claim_for_the_process_types_never_stops_io_refills():
    from bgjobs.worker.duties.claiming import Claimer
    from bgjobs.worker.wakeups import Wakeups

    store, fleet = QueueStore({"io": 7}), IoFleet()
    claimer = Claimer(store, fleet, Wakeups(True), "w",  # type: ignore[arg-type]
                      lambda: ("cpu", "io"), lambda: 0, poll_interval=5.0, lease=30,
                      backlog_limit=100)
    claimer.run(0.0)  # the start: both claim; the process types' claim comes back empty
    assert store.claims == [(("cpu",), 1, 0), (("io",), 2, 2)]
    claimer.run(4.0)  # no room for io yet: nothing claimed, no busy loop
    assert len(store.claims) == 2 and claimer.wake_at(4.0) == 5.0
    claimer.run(5.0)  # the poll: the process types' claim is empty again, io still full
    assert store.claims[2:] == [(("cpu",), 1, 0)]
    for t in (5.1, 5.2, 5.3):  # each time both io slots free up, refilled without a wake-up
        fleet.io_free = 2
        assert claimer.wake_at(t) == t
        claimer.run(t)
    assert store.claims[3:] == [(("io",), 2, 2), (("io",), 2, 2), (("io",), 2, 1)]
    assert store.pending["io"] == 0
    fleet.io_free = 2
    assert claimer.wake_at(5.4) == 10.0  # the short claim ended the refills: sleep to the poll


def test_io_claims_in_slices_go_on_while_there_is_room(monkeypatch):
    from bgjobs.worker.duties import claiming
    from bgjobs.worker.wakeups import Wakeups

    monkeypatch.setattr(claiming, "IO_CLAIM_SLICE", 1)
    store, fleet = QueueStore({"io": 5}), IoFleet()
    claimer = claiming.Claimer(store, fleet, Wakeups(True), "w",  # type: ignore[arg-type]
                               lambda: ("cpu", "io"), lambda: 0, poll_interval=5.0, lease=30,
                               backlog_limit=100)
    claimer.limits_read, claimer.next_at = True, 5.0
    claimer.procs.wake = False
    claimer.woken("io")  # one job's notification: no sweep
    claimer.io["io"].sweep = False
    claimer.run(0.0)
    assert store.claims == [(("io",), 1, 1)] and claimer.wake_at(0.0) == 0.0
    claimer.run(0.0)  # the second slice fills the process, with no notification
    assert store.claims[1:] == [(("io",), 1, 1)] and store.pending["io"] == 3
    assert claimer.wake_at(0.0) == 5.0  # full now: nothing until a slot frees (or the poll)


def test_a_crashed_io_process_fails_the_jobs_it_ran_and_gives_back_those_it_had_not_started():
    import uuid
    from types import SimpleNamespace

    from bgjobs.worker.fleet import Fleet, ahead

    ids = [uuid.uuid4() for _ in range(6)]
    # Handed in this order: 3 of "a" (concurrency 2) and 3 of "b" (concurrency 4).
    jobs = dict(zip(ids, ["a", "b", "a", "b", "a", "b"], strict=True))
    child = SimpleNamespace(io={"a": 2, "b": 4}, jobs=jobs)
    assert Fleet._started(child) == {ids[0], ids[1], ids[2], ids[3], ids[5]}  # type: ignore[arg-type]
    assert Fleet._started(SimpleNamespace(io={}, jobs=dict.fromkeys(ids))) == {ids[0]}  # type: ignore[arg-type]
    assert (ahead(1), ahead(50), ahead(500), ahead(10_000)) == (0, 10, 100, 100)
