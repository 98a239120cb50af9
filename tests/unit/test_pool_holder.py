"""core/pool_holder.py: one pool per process, opened on first use, anew after fork, closed once."""

from __future__ import annotations

import os
import threading

import pytest

from bgjobs.core import pool_holder
from bgjobs.core.pool_holder import PoolHolder


class FakePool:
    """What the holder needs of a Pool: it makes a Store over it and closes it."""

    url = "postgresql://nowhere/fake"

    def __init__(self) -> None:
        self.closed = False

    def lend(self):  # pragma: no cover - no statement is run here
        raise AssertionError("no connection is lent in these tests")

    def close(self, timeout: float = 5.0) -> None:
        self.closed = True


def opener(made: list[FakePool]):
    def open_pool():
        made.append(FakePool())
        return made[-1]
    return open_pool


def test_one_pool_per_process_made_on_first_use():
    made: list[FakePool] = []
    holder = PoolHolder(opener(made))  # type: ignore[arg-type]
    assert made == []
    store = holder.store()
    assert holder.store() is store and store.pool is made[0] and len(made) == 1
    holder.close()
    assert made[0].closed
    assert holder.store().pool is made[1]  # a later use opens another
    holder.close()


def test_threads_arriving_together_share_one_pool():
    made: list[FakePool] = []
    holder = PoolHolder(opener(made))  # type: ignore[arg-type]
    start = threading.Barrier(8)
    stores = []

    def first_use() -> None:
        start.wait()
        stores.append(holder.store())

    threads = [threading.Thread(target=first_use) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(made) == 1 and len({id(s) for s in stores}) == 1
    holder.close()


def test_a_forked_child_opens_its_own_and_leaves_its_parents(monkeypatch: pytest.MonkeyPatch):
    made: list[FakePool] = []
    holder = PoolHolder(opener(made))  # type: ignore[arg-type]
    parents = holder.store()
    monkeypatch.setattr(os, "getpid", lambda: -1)  # as seen from a child after fork
    child = holder.store()
    assert child is not parents and child.pool is made[1]
    holder.close()
    assert made[1].closed and not made[0].closed  # the parent's sockets are the parent's


def test_replace_closes_the_pool_it_replaces_and_keeps_the_new_opener():
    made: list[FakePool] = []
    holder = PoolHolder(opener(made))  # type: ignore[arg-type]
    first = holder.store()
    other: list[FakePool] = []
    second = holder.replace(opener(other))  # type: ignore[arg-type]
    assert made[0].closed and first is not second and second.pool is other[0]
    holder.close()
    assert holder.store().pool is other[1]
    holder.close()


def test_with_closes_and_exit_closes_what_is_left_open(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(pool_holder, "_open_holders", set())  # this test's holders only
    made: list[FakePool] = []
    with PoolHolder(opener(made)) as store:  # type: ignore[arg-type]
        assert store.pool is made[0]
    assert made[0].closed
    left_open = PoolHolder(opener(made))  # type: ignore[arg-type]
    left_open.store()
    assert left_open in pool_holder._open_holders
    pool_holder._close_all()
    assert made[1].closed and left_open not in pool_holder._open_holders
