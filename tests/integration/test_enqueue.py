"""The public enqueue path (bgjobs.enqueue and friends) against a real Postgres: one statement
per job, the task's rules applied, the caller's transaction respected."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta

import psycopg
import pytest

import bgjobs
from bgjobs.core.db import make_pool
from bgjobs.core.pool_holder import PoolHolder
from bgjobs.core.store import Store
from bgjobs.tasks import enqueue as enqueue_mod
from tests.conftest import drain

#: An exclusive type with a bounded param and a default, as a host app declares them.
EXCLUSIVE = "enqueue_exclusive"


@bgjobs.task(EXCLUSIVE, exclusive=True, params={
    "tickers": bgjobs.Param(int, default=500, min=1, max=500),
    "years": bgjobs.Param(int, default=8, min=1, max=20),
})
def enqueue_exclusive(ctx):
    """An exclusive job type for these tests."""
    return None


class CountingCursor(psycopg.Cursor):
    """Counts the statements sent on its connection (a round trip each, here)."""

    def execute(self, query, params=None, **kwargs):  # type: ignore[no-untyped-def,override]
        self.connection.statements = getattr(self.connection, "statements", 0) + 1
        return super().execute(query, params, **kwargs)


@pytest.fixture
def counted(db_url: str) -> Iterator[Store]:
    """A store whose pooled connection counts the statements it runs."""
    pool = make_pool(db_url, min_size=1, max_size=1, open_wait=True,
                     cursor_factory=CountingCursor)
    try:
        yield Store(pool)
    finally:
        pool.close()


def statements(store: Store) -> int:
    with store.pool.connection() as conn:
        return getattr(conn, "statements", 0)


def count_jobs(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT count(*) FROM background_jobs").fetchone()[0]


def test_one_enqueue_is_one_statement_and_no_pool_check(counted: Store):
    bgjobs.enqueue("noop", {"echo": 1}, store=counted)  # a fresh connection: lent unchecked
    before = statements(counted)
    job = bgjobs.enqueue("noop", {"echo": 2}, store=counted)
    assert statements(counted) == before + 1
    assert job.status == "pending" and job.params == {"echo": 2} and job.max_attempts == 3


def test_a_connection_idle_for_a_while_is_checked_before_it_is_lent(counted: Store):
    bgjobs.enqueue("noop", store=counted)
    with counted.pool.connection() as conn:
        conn._bgjobs_idle_since -= 60  # type: ignore[attr-defined]
        before = getattr(conn, "statements", 0)
    bgjobs.enqueue("noop", store=counted)
    assert statements(counted) == before + 2  # the check, then the insert


def test_the_task_fills_defaults_and_sets_attempts_and_exclusivity(store: Store):
    job = bgjobs.enqueue(EXCLUSIVE, {"tickers": 5}, user_id=None, store=store)
    assert job.params["tickers"] == 5 and job.params["years"] == 8
    assert job.exclusive_key == EXCLUSIVE
    with pytest.raises(bgjobs.Conflict) as clash:
        bgjobs.enqueue(EXCLUSIVE, {"tickers": 6}, store=store)
    assert clash.value.job_id == job.id


@pytest.mark.parametrize(("call", "error", "message"), [
    (lambda s: bgjobs.enqueue("nope", store=s), bgjobs.UnknownTask, "unknown job type 'nope'"),
    (lambda s: bgjobs.enqueue(EXCLUSIVE, {"tickers": 0}, store=s), bgjobs.InvalidParams,
     "tickers must be at least 1"),
    (lambda s: bgjobs.enqueue("noop", {"echo": float("nan")}, store=s), bgjobs.InvalidParams,
     "not JSON"),
    (lambda s: bgjobs.enqueue("noop", {"echo": "a\x00b"}, store=s), bgjobs.InvalidParams,
     "NUL"),
    (lambda s: bgjobs.enqueue("noop", priority=5000, store=s), bgjobs.InvalidRequest,
     "priority must be between"),
    (lambda s: bgjobs.enqueue("noop", run_after=datetime(2030, 1, 1), store=s),
     bgjobs.InvalidRequest, "timezone"),
    (lambda s: bgjobs.enqueue("noop", idempotency_key="", store=s), bgjobs.InvalidRequest,
     "idempotency key"),
    # One rule with the HTTP header's: a key made here can be replayed over HTTP.
    (lambda s: bgjobs.enqueue("noop", idempotency_key="commande-été", store=s),
     bgjobs.InvalidRequest, "printable ASCII"),
    (lambda s: bgjobs.enqueue("noop", idempotency_key=" order-7", store=s),
     bgjobs.InvalidRequest, "spaces only inside"),
    (lambda s: bgjobs.enqueue_many(EXCLUSIVE, [{}, {}], store=s), bgjobs.InvalidRequest,
     "exclusive"),
    (lambda s: bgjobs.enqueue_many("noop", [{}, {"bogus": 1}], store=s),
     bgjobs.InvalidParams, r"params_list\[1\]"),
])
def test_bad_input_is_refused_and_stores_nothing(store, conn, call, error, message):
    with pytest.raises(error, match=message):
        call(store)
    assert count_jobs(conn) == 0


def test_inside_the_callers_transaction_a_rollback_leaves_no_job_and_no_notification(
        store, db_url, listener):
    with psycopg.connect(db_url) as app:
        app.execute("SELECT 1")  # the app's own work, in its transaction
        bgjobs.enqueue("noop", {"echo": "rolled back"}, conn=app, store=store)
        bgjobs.enqueue_many("noop", [{}, {}], conn=app, store=store)
        app.rollback()
        assert drain(listener) == []
        kept = bgjobs.enqueue("noop", {"echo": "kept"}, conn=app, store=store)
        assert drain(listener) == []  # not before the commit
        app.commit()
    notes = drain(listener)
    assert ("background_jobs_new", "noop") in notes
    assert [j.id for j in store.list_jobs()] == [kept.id]


def test_a_clash_inside_the_callers_transaction_does_not_abort_it(store, db_url):
    first = bgjobs.enqueue(EXCLUSIVE, user_id=None, store=store)
    with psycopg.connect(db_url) as app:
        with pytest.raises(bgjobs.Conflict):
            bgjobs.enqueue(EXCLUSIVE, conn=app, store=store)
        replayed = bgjobs.enqueue("noop", idempotency_key="k", conn=app, store=store)
        again = bgjobs.enqueue("noop", idempotency_key="k", conn=app, store=store)
        assert again.id == replayed.id
        app.execute("SELECT 1")  # the transaction is still usable
        app.commit()
    assert {j.id for j in store.list_jobs()} == {first.id, replayed.id}


@pytest.mark.parametrize("setup", [
    pytest.param({"row_factory": psycopg.rows.dict_row}, id="dict_row"),
    pytest.param({"row_factory": psycopg.rows.namedtuple_row}, id="namedtuple_row"),
    pytest.param({"cursor_factory": psycopg.ClientCursor}, id="ClientCursor"),
    pytest.param({"cursor_factory": psycopg.RawCursor}, id="RawCursor"),
])
def test_the_callers_connection_may_have_its_own_rows_and_cursors(store, db_url, setup):
    # A Flask app's connection often reads dicts, and one behind PgBouncer binds client-side:
    # bgjobs's statements on it read what they expect all the same.
    with psycopg.connect(db_url, **setup) as app:
        job = bgjobs.enqueue("noop", {"echo": 1}, conn=app, store=store)
        replayed = enqueue_mod.submit("noop", {"echo": 1}, idempotency_key="k", conn=app,
                                 store=store)
        again = enqueue_mod.submit("noop", {"echo": 1}, idempotency_key="k", conn=app, store=store)
        many = bgjobs.enqueue_many("noop", [{"echo": 2}, {"echo": 3}], conn=app, store=store)
        with bgjobs.workflow(conn=app, store=store) as flow:
            first = flow.enqueue("noop")
            second = flow.enqueue("noop", after=[first])
        app.commit()
    assert (again.job, again.created) == (replayed.job, False)
    assert store.get_job(job.id) == job
    assert [store.get_job(j.id) for j in many] == many
    assert store.get_job(second.id).waiting_for == 1


def test_an_idempotency_key_reused_for_another_job_is_a_conflict(store):
    job = bgjobs.enqueue("noop", {"echo": 1}, idempotency_key="order-7", store=store)
    assert bgjobs.enqueue("noop", {"echo": 1}, idempotency_key="order-7", store=store) == job
    with pytest.raises(bgjobs.Conflict, match="different job"):
        bgjobs.enqueue("noop", {"echo": 2}, idempotency_key="order-7", store=store)


def test_enqueue_many_is_one_statement_in_order(counted: Store, conn):
    bgjobs.enqueue("noop", store=counted)
    before = statements(counted)
    jobs = bgjobs.enqueue_many("noop", [{"echo": n} for n in range(500)], user_id=None,
                               store=counted)
    assert statements(counted) == before + 1
    assert [j.params["echo"] for j in jobs] == list(range(500))
    assert count_jobs(conn) == 501 and bgjobs.enqueue_many("noop", [], store=counted) == []


def test_get_job_and_cancel_are_scoped_to_the_user(store):
    alice, _ = store.create_user("alice")
    bob, _ = store.create_user("bob")
    job = bgjobs.enqueue("noop", user_id=alice.id, run_after=datetime.now().astimezone()
                         + timedelta(hours=1), store=store)
    assert bgjobs.get_job(job.id, user_id=alice.id, store=store) == job
    assert bgjobs.get_job(str(job.id), store=store) == job
    assert bgjobs.get_job(job.id, user_id=bob.id, store=store) is None
    assert bgjobs.get_job("not-a-uuid", store=store) is None
    with pytest.raises(bgjobs.NotFound):
        bgjobs.cancel(job.id, user_id=bob.id, store=store)
    assert bgjobs.cancel(job.id, user_id=alice.id, store=store).status == "cancelled"
    with pytest.raises(bgjobs.Conflict, match="already finished"):
        bgjobs.cancel(job.id, store=store)


def test_an_unknown_user_is_invalid_input(store, conn):
    with pytest.raises(bgjobs.InvalidInput, match=r'^no such user: Key \(user_id\)=\(424242\) '
                       r'is not present in table "bgjobs_users"'):
        bgjobs.enqueue("noop", user_id=424242, store=store)
    assert count_jobs(conn) == 0


def test_a_refused_enqueue_leaves_its_connection_fit_for_the_next(counted: Store, db_url):
    # One connection, and the cursor bgjobs keeps on it for the insert, across a refusal; the
    # same on a caller's connection (the refusal ends its transaction: it rolls back).
    first = bgjobs.enqueue("noop", {"echo": 1}, store=counted)
    with pytest.raises(bgjobs.InvalidInput, match="no such user"):
        bgjobs.enqueue("noop", user_id=424242, store=counted)
    second = bgjobs.enqueue("noop", {"echo": 2}, store=counted)
    assert [counted.get_job(j.id) for j in (first, second)] == [first, second]
    with psycopg.connect(db_url) as app:
        with pytest.raises(bgjobs.InvalidInput, match="no such user"):
            bgjobs.enqueue("noop", user_id=424242, conn=app, store=counted)
        app.rollback()
        third = bgjobs.enqueue("noop", {"echo": 3}, conn=app, store=counted)
        app.commit()
    assert counted.get_job(third.id) == third


def test_without_a_store_the_process_pool_is_used(db_url, monkeypatch):
    monkeypatch.setattr(enqueue_mod, "_default", PoolHolder(enqueue_mod._opener()))
    monkeypatch.setenv("DATABASE_URL", db_url)
    try:
        job = bgjobs.enqueue("noop", {"echo": "default"})
        assert bgjobs.get_job(job.id) == job
        assert enqueue_mod.default_store() is enqueue_mod.default_store()
    finally:
        enqueue_mod.default_store().pool.close()


def test_threads_that_arrive_together_share_one_process_pool(db_url, monkeypatch):
    """Seen in CI: two first uses each opened a pool, the second closed the first mid-request."""
    monkeypatch.setattr(enqueue_mod, "_default", PoolHolder(enqueue_mod._opener()))
    monkeypatch.setenv("DATABASE_URL", db_url)
    start = threading.Barrier(16)
    stores: list[Store] = []
    failures: list[BaseException] = []

    def first_request() -> None:
        start.wait()
        try:
            stores.append(enqueue_mod.default_store())
            assert bgjobs.get_job(uuid.uuid4()) is None
        except BaseException as exc:  # noqa: BLE001 - reported below, with the others
            failures.append(exc)

    threads = [threading.Thread(target=first_request) for _ in range(16)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert failures == []
        assert len(stores) == 16 and len({id(s) for s in stores}) == 1
        assert not stores[0].pool.closed
    finally:
        for s in {id(s): s for s in stores}.values():
            s.pool.close()
