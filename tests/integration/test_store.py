"""The job store against a real Postgres: claiming, fencing, triggers, users."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from bgjobs.core.errors import Conflict, InvalidInput, NotFound
from bgjobs.core.jobs import Attempt, Status
from bgjobs.core.store import NewJob
from tests.conftest import add_job


def test_eight_threads_claim_500_jobs_each_exactly_once(store, conn):
    conn.execute("INSERT INTO background_jobs (job_type) "
                 "SELECT 'noop' FROM generate_series(1, 500)")
    claimed: list[list[uuid.UUID]] = [[] for _ in range(8)]
    start = threading.Barrier(8)

    def claimer(n: int) -> None:
        start.wait()
        while jobs := store.claim(f"w{n}", ["noop"], limit=1 + n % 4):
            claimed[n].extend(j.id for j in jobs)

    threads = [threading.Thread(target=claimer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    ids = [i for per_thread in claimed for i in per_thread]
    assert len(ids) == 500 and len(set(ids)) == 500
    assert sum(1 for per_thread in claimed if per_thread) > 1, "only one thread got work"
    rows = conn.execute("SELECT status, attempts, count(*) FROM background_jobs "
                        "GROUP BY 1, 2").fetchall()
    assert rows == [("running", 1, 500)]


def test_claim_order_types_and_run_after(store):
    now = datetime.now(UTC)
    late = add_job(store, "noop", priority=5)
    early = add_job(store, "noop", priority=-1)
    future = add_job(store, "noop", priority=-9, run_after=now + timedelta(hours=1))
    other = add_job(store, "other", priority=-5)
    assert [j.id for j in store.claim("w", ["noop"], limit=10)] == [early.id, late.id]
    assert store.claim("w", ["noop"]) == []
    assert 3500 < store.next_due_in(["noop"]) <= 3600  # an hour on the database's clock
    [due] = store.claim("w", ["noop"], now=now + timedelta(hours=2))
    assert due.id == future.id
    assert [j.id for j in store.claim("w", ["other", "noop"])] == [other.id]


def test_next_due_in_wakes_at_once_for_a_job_that_came_due_during_the_claim(store, conn):
    """A retry whose backoff ended mid-claim is claimed at once, not at the fallback poll;
    one already due when the claim ran was its answer (a limit, a peer's lock): no busy loop."""
    retry = add_job(store, "noop")
    conn.execute("UPDATE background_jobs SET run_after = now() - interval '1 second' "
                 "WHERE id = %s", (retry.id,))
    assert store.next_due_in(["noop"], claim_age=0.0) is None  # due before the claim
    wait = store.next_due_in(["noop"], claim_age=60.0)  # came due during a claim 60 s ago
    assert wait is not None and wait <= 0
    assert store.next_due_in(["other"], claim_age=60.0) is None
    conn.execute("UPDATE background_jobs SET waiting_for = 1 WHERE id = %s", (retry.id,))
    assert store.next_due_in(["noop"], claim_age=60.0) is None  # its dependencies wake it


def test_claim_uses_the_partial_index(conn):
    conn.execute("INSERT INTO background_jobs (job_type, status) "
                 "SELECT 'noop', 'complete' FROM generate_series(1, 5000)")
    conn.execute("INSERT INTO background_jobs (job_type) SELECT 'noop' FROM generate_series(1, 20)")
    conn.execute("ANALYZE background_jobs")
    from bgjobs.core.queries import q

    plan = conn.execute(
        b"EXPLAIN " + q("claim_jobs"),
        {"worker_id": "w", "types": ["noop"], "limit": 1, "lease_seconds": 30, "now": None},
    ).fetchall()
    text = "\n".join(r[0] for r in plan)
    assert "background_jobs_claim_idx" in text, text


def test_status_check_rejects_unknown_status(conn):
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("INSERT INTO background_jobs (job_type, status) VALUES ('noop', 'done')")
    conn.execute("INSERT INTO background_jobs (job_type) VALUES ('noop')")
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("UPDATE background_jobs SET status = 'paused'")
    assert conn.execute("SELECT status FROM background_jobs").fetchone() == ("pending",)


def test_updated_at_and_version_advance_on_every_update(conn):
    job_id, version, updated = conn.execute(
        "INSERT INTO background_jobs (job_type) VALUES ('noop') RETURNING id, version, updated_at"
    ).fetchone()
    for n in range(3):
        with conn.transaction():  # two updates in one transaction still both advance
            conn.execute("UPDATE background_jobs SET priority = %s WHERE id = %s", (n, job_id))
            conn.execute("UPDATE background_jobs SET priority = priority WHERE id = %s", (job_id,))
        new_version, new_updated = conn.execute(
            "SELECT version, updated_at FROM background_jobs WHERE id = %s", (job_id,)).fetchone()
        assert new_version == version + 2
        assert new_updated > updated
        version, updated = new_version, new_updated


def test_plain_sql_insert_gets_every_default(conn):
    row = conn.execute(
        "INSERT INTO background_jobs (job_type) VALUES ('noop') RETURNING *").fetchone()
    cols = [d.name for d in conn.execute("SELECT * FROM background_jobs LIMIT 0").description]
    job = dict(zip(cols, row, strict=True))
    assert isinstance(job["id"], uuid.UUID)
    assert job["status"] == "pending" and job["progress"] == {} and job["params"] == {}
    assert job["attempts"] == 0 and job["max_attempts"] == 3 and job["version"] == 1
    assert job["created_at"] and job["updated_at"] and job["run_after"]


def test_fencing_refuses_the_old_owner_after_requeue_cancel_and_reap(store):
    job = add_job(store, "noop")
    [claimed] = store.claim("old", ["noop"])
    old = Attempt(job.id, "old", claimed.attempts)
    store.requeue(job.id)
    assert store.report_progress([(old, {"current": 1})]) == set()
    assert store.complete([(old, {"late": True}, None)]) == set()
    assert store.heartbeat([old]) == set()
    [again] = store.claim("new", ["noop"])
    assert again.attempts == 2
    assert store.complete([(old, {"late": True}, None)]) == set()
    store.cancel(job.id)
    new = Attempt(job.id, "new", 2)
    assert store.fail([(new, {"error": "X"}, True, 0)]) == {}
    final = store.get_job(job.id)
    assert final.status == Status.CANCELLED and final.result is None

    job2 = add_job(store, "noop")
    [c2] = store.claim("dead", ["noop"], lease_seconds=1)
    reaped = store.reap_stale(now=datetime.now(UTC) + timedelta(seconds=5))
    assert [(r["id"], r["status"]) for r in reaped] == [(job2.id, "pending")]
    assert store.complete([(Attempt(job2.id, "dead", c2.attempts), {}, None)]) == set()
    assert store.get_job(job2.id).status == "pending"


def test_fail_retries_until_max_attempts_then_errors(store):
    job = add_job(store, "noop", max_attempts=2)
    [c] = store.claim("w", ["noop"])
    assert store.fail([(Attempt(job.id, "w", c.attempts), {"error": "E"}, True, 30)]) == {
        job.id: "pending"}
    assert store.get_job(job.id).run_after > datetime.now(UTC) + timedelta(seconds=20)
    [c] = store.claim("w", ["noop"], now=datetime.now(UTC) + timedelta(minutes=1))
    assert store.fail([(Attempt(job.id, "w", c.attempts), {"error": "E"}, True, 30)]) == {
        job.id: "error"}
    job3 = add_job(store, "noop")
    [c] = store.claim("w", ["noop"])
    assert store.fail([(Attempt(job3.id, "w", 1), {"error": "Fatal"}, False, 0)]) == {
        job3.id: "error"}


def test_release_hands_back_without_spending_an_attempt(store):
    job = add_job(store, "noop", max_attempts=1)
    [c] = store.claim("w", ["noop"])
    assert store.release([Attempt(job.id, "w", c.attempts)]) == {job.id}
    back = store.get_job(job.id)
    assert back.status == "pending" and back.max_attempts - back.attempts == 1


def test_create_job_inside_the_callers_transaction(store, db_url):
    with psycopg.connect(db_url) as app_conn:
        add_job(store, "noop", {"n": 1}, conn=app_conn)
        app_conn.rollback()
        assert store.list_jobs() == []
        job = add_job(store, "noop", {"n": 2}, conn=app_conn)
        app_conn.commit()
    assert [j.id for j in store.list_jobs()] == [job.id]


def test_idempotency_key_returns_the_same_job(store):
    user, _ = store.create_user("idem")
    first, created = store.insert_job(NewJob("noop", {}, user.id, idempotency_key="k1"))
    again, created_again = store.insert_job(NewJob("noop", {}, user.id, idempotency_key="k1"))
    assert created and not created_again and again.id == first.id
    other, created_other = store.insert_job(NewJob("noop", {}, idempotency_key="k1"))  # no user
    assert created_other and other.id != first.id


def test_exclusive_types_allow_one_active_job_per_user(store):
    user, _ = store.create_user("excl")
    first = add_job(store, "report", user_id=user.id, exclusive=True)
    with pytest.raises(Conflict) as err:
        add_job(store, "report", user_id=user.id, exclusive=True)
    assert err.value.job_id == first.id
    store.cancel(first.id)
    add_job(store, "report", user_id=user.id, exclusive=True)


def test_list_jobs_pages_with_a_stable_cursor(store):
    user, _ = store.create_user("pager")
    made = [add_job(store, "noop", {"n": n}, user_id=user.id) for n in range(7)]
    add_job(store, "noop")  # someone else's
    seen, before = [], None
    while page := store.list_jobs(user_id=user.id, limit=3, before=before):
        seen += page
        before = (page[-1].created_at, page[-1].id)
    assert len(seen) == 7 and {j.id for j in seen} == {j.id for j in made}
    keys = [(j.created_at, j.id) for j in seen]
    assert keys == sorted(keys, reverse=True)
    assert store.list_jobs(user_id=user.id, status="running") == []


def test_cancel_and_get_are_scoped_to_the_user(store):
    alice, _ = store.create_user("alice")
    bob, _ = store.create_user("bob")
    job = add_job(store, "noop", user_id=alice.id)
    with pytest.raises(NotFound):
        store.get_job(job.id, bob.id)
    with pytest.raises(NotFound):
        store.cancel(job.id, bob.id)
    assert store.get_job(job.id).status == "pending"
    assert store.cancel(job.id, alice.id).status == "cancelled"
    with pytest.raises(Conflict):
        store.cancel(job.id, alice.id)
    with pytest.raises(NotFound):
        store.cancel(uuid.uuid4())


def test_users_and_tokens(store, conn):
    user, token = store.create_user("carol")
    assert store.user_for_token(token).id == user.id
    assert store.user_for_token(token + "x") is None
    stored = conn.execute("SELECT token_hash FROM bgjobs_api_tokens").fetchone()[0]
    assert token.encode() not in bytes(stored)
    with pytest.raises(Conflict):
        store.create_user("carol")
    with pytest.raises(InvalidInput):
        store.create_user("no spaces please")
    tokened = store.user_for_token(token)
    session_id = store.start_session(tokened, 3600)
    assert store.user_for_session(session_id).session_id == session_id
    assert store.revoke_tokens("carol") == 1
    assert store.user_for_token(token) is None
    assert store.user_for_session(session_id) is None


def test_sessions_end_at_sign_out_and_expire(store, conn):
    user, token = store.create_user("erin")
    tokened = store.user_for_token(token)
    first, second = store.start_session(tokened, 3600), store.start_session(tokened, 3600)
    assert store.end_session(first) is True
    assert store.end_session(first) is False  # already ended
    assert store.user_for_session(first) is None
    assert store.user_for_session(second).id == user.id  # the other session lives on
    conn.execute("UPDATE bgjobs_sessions SET expires_at = now() - interval '1 s' "
                 "WHERE id = %s", [second])
    assert store.user_for_session(second) is None
    # Signing in again clears the ended and expired ones away.
    third = store.start_session(tokened, 3600)
    assert [r[0] for r in conn.execute("SELECT id FROM bgjobs_sessions")] == [third]
