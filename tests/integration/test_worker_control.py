"""background_jobs_control (006_control_channel.sql): a running job taken from its worker by
anyone else announces it, with the attempt taken; the worker's own writes stay silent."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from bgjobs.core.jobs import Attempt, Completion
from bgjobs.core.store import Store
from bgjobs.worker.connection import OneConnection
from tests.conftest import add_job


@pytest.fixture
def control(db_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(db_url, autocommit=True) as c:
        c.execute("LISTEN background_jobs_control")
        yield c


def taken(conn: psycopg.Connection) -> list[dict[str, Any]]:
    return [json.loads(n.payload) for n in conn.notifies(timeout=0.5, stop_after=None)]


@pytest.fixture
def worker_store(db_url: str) -> Iterator[Store]:
    """The store as a supervisor holds it (its writes say whose they are, per statement)."""
    one = OneConnection(db_url)
    try:
        yield Store(one)
    finally:
        one.close()


def test_the_owners_own_writes_are_silent(worker_store, store, control):
    for _ in range(3):
        add_job(store, "noop")
    jobs = worker_store.claim("host:1 with space", ["noop"], limit=3)
    attempts = [Attempt(j.id, "host:1 with space", j.attempts) for j in jobs]
    worker_store.report_progress([(attempts[0], {"current": 1})])
    worker_store.complete([Completion(attempts[0], {"ok": True}, None)])
    worker_store.fail([(attempts[1], {"error": "E", "message": "m"}, True, 0.0)])
    worker_store.release([attempts[2]])
    assert taken(control) == []


def test_cancel_requeue_and_reap_by_others_name_the_attempt(worker_store, store, control):
    jobs = [add_job(store, "noop", max_attempts=5) for _ in range(3)]
    claimed = {j.id: j for j in worker_store.claim("host:1 with space", ["noop"], limit=3)}
    store.cancel(jobs[0].id)
    store.requeue(jobs[1].id)
    later = datetime.now(UTC) + timedelta(minutes=5)
    assert [r["id"] for r in store.reap_stale(now=later)] == [jobs[2].id]
    assert sorted(taken(control), key=lambda p: p["id"]) == sorted(
        ({"id": str(j.id), "attempt": claimed[j.id].attempts} for j in jobs),
        key=lambda p: p["id"])


def test_a_reaper_leaves_its_own_jobs_and_a_nameless_one_announces_what_it_takes(
        worker_store, store, control):
    # The worker says whose a write is per statement (a pooler in transaction mode keeps no
    # session setting), so a reaper is the owner only if it names itself; it then leaves its
    # own running jobs alone (011) and has nothing to announce.
    add_job(store, "noop")
    worker_store.claim("host:1 with space", ["noop"])
    later = datetime.now(UTC) + timedelta(minutes=5)
    assert worker_store.reap_stale(now=later, reaper="host:1 with space") == []
    assert taken(control) == []
    assert len(worker_store.reap_stale(now=later)) == 1
    assert len(taken(control)) == 1
