"""A supervisor frozen inside one of its transactions (a paused VM, SIGSTOP) must not keep its
locks: the reaper's turn is an advisory lock held for a transaction, so while a frozen
supervisor held it no other supervisor could take back any job (worker/connection.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from bgjobs.core.errors import DatabaseUnavailable
from bgjobs.core.store import Store
from bgjobs.worker.connection import OneConnection
from tests.conftest import add_job, wait_for


def freeze_inside_the_reapers_turn(one: OneConnection) -> None:
    """What a supervisor frozen between the reaper's statement and its COMMIT leaves."""
    with one.lend() as conn:
        conn.execute("BEGIN")
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('bgjobs.reaper'))")


def stale_job(store: Store, worker_store: Store) -> None:
    add_job(store, "noop")
    assert worker_store.claim("frozen:1", ["noop"], limit=1)


def test_a_frozen_supervisors_transaction_ends_and_another_reaps(db_url, store):
    frozen, other = OneConnection(db_url, idle_in_transaction=1.0), OneConnection(db_url)
    try:
        stale_job(store, Store(frozen))
        freeze_inside_the_reapers_turn(frozen)
        later = datetime.now(UTC) + timedelta(minutes=5)  # the job's lease has run out
        reaper = Store(other)
        assert reaper.reap_stale(now=later, reaper="other:1") == []  # not its turn yet
        reaped = wait_for(lambda: reaper.reap_stale(now=later, reaper="other:1"), timeout=30)
        assert [r["status"] for r in reaped] == ["pending"]
        # Woken, the frozen supervisor finds its session ended (an outage to it: it backs off
        # and reconnects), and its next call works.
        with pytest.raises(DatabaseUnavailable, match="ended this session"):
            Store(frozen).reap_stale(now=later, reaper="frozen:1")
        assert Store(frozen).reap_stale(now=later, reaper="frozen:1") == []
    finally:
        frozen.close()
        other.close()


@pytest.mark.parametrize(("seconds", "shown"), [(None, "10s"), (0, "0")])
def test_the_limit_is_set_on_a_direct_connection_unless_none(db_url, seconds, shown):
    one = OneConnection(db_url) if seconds is None else OneConnection(db_url, seconds)
    try:
        with one.lend() as conn:
            row = conn.execute("SHOW idle_in_transaction_session_timeout").fetchone()
        assert row == (shown,)
    finally:
        one.close()
