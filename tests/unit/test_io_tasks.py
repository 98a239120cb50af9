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
