"""Cluster-wide limits per job type, enforced inside the claim statement."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import psycopg

from bgjobs.core.jobs import Attempt
from bgjobs.core.queries import q
from bgjobs.core.store import Store
from bgjobs.core.store_ops import JobTypeRow
from tests.conftest import add_job


def limit(conn: psycopg.Connection, job_type: str, max_running: int | None = None,
          rate: float | None = None) -> None:
    conn.execute("INSERT INTO bgjobs_job_types (job_type, max_running, starts_per_second) "
                 "VALUES (%s, %s, %s) ON CONFLICT (job_type) DO UPDATE SET "
                 "max_running = EXCLUDED.max_running, "
                 "starts_per_second = EXCLUDED.starts_per_second", (job_type, max_running, rate))


def running(conn: psycopg.Connection, job_type: str) -> int:
    return conn.execute("SELECT count(*) FROM background_jobs WHERE status = 'running' "
                        "AND job_type = %s", (job_type,)).fetchone()[0]


def test_max_running_takes_the_oldest_and_leaves_the_rest_pending_in_order(store, conn):
    limit(conn, "lim", max_running=2)
    jobs = [add_job(store, "lim") for _ in range(5)]
    free = add_job(store, "noop")
    claimed = store.claim_specs("w", ["lim", "noop"], limit=10)
    assert [c.id for c in claimed] == [jobs[0].id, jobs[1].id, free.id]
    assert store.claim_specs("w", ["lim", "noop"], limit=10) == []
    # One finishes: the next in line, and only it, may start.
    assert store.complete([(Attempt(jobs[0].id, "w", 1), {}, None)]) == {jobs[0].id}
    assert [c.id for c in store.claim_specs("w", ["lim"], limit=10)] == [jobs[2].id]
    assert running(conn, "lim") == 2
    # Cancelling a running one frees its slot too.
    store.cancel(jobs[1].id)
    assert [c.id for c in store.claim_specs("w", ["lim"], limit=10)] == [jobs[3].id]


def test_priority_order_holds_across_limited_and_free_types(store, conn):
    limit(conn, "lim", max_running=5)
    low = add_job(store, "noop", priority=5)
    urgent = add_job(store, "lim", priority=-5)
    mid = add_job(store, "noop")
    claimed = store.claim_specs("w", ["noop", "lim"], limit=2)
    assert [c.id for c in claimed] == [urgent.id, mid.id]
    assert [c.id for c in store.claim_specs("w", ["noop", "lim"], limit=2)] == [low.id]


def test_a_type_the_worker_does_not_run_is_not_touched(store, conn):
    limit(conn, "lim", max_running=1)
    add_job(store, "lim")
    assert store.claim_specs("w", ["noop"], limit=5) == []
    assert running(conn, "lim") == 0


def test_starts_per_second_is_a_token_bucket(store, conn):
    limit(conn, "rated", rate=2.0)
    for _ in range(6):
        add_job(store, "rated")
    t0 = datetime.now(UTC) + timedelta(seconds=1)
    assert len(store.claim_specs("w", ["rated"], limit=10, now=t0)) == 2  # a second's burst
    assert store.claim_specs("w", ["rated"], limit=10, now=t0) == []
    assert len(store.claim_specs("w", ["rated"], limit=10, now=t0 + timedelta(seconds=0.5))) == 1
    assert len(store.claim_specs("w", ["rated"], limit=10, now=t0 + timedelta(seconds=10))) == 2


def test_an_empty_queue_does_not_spend_the_rate(store, conn):
    limit(conn, "rated", rate=1.0)
    t0 = datetime.now(UTC) + timedelta(seconds=1)
    for _ in range(3):
        assert store.claim_specs("w", ["rated"], limit=10, now=t0) == []
    add_job(store, "rated")
    assert len(store.claim_specs("w", ["rated"], limit=10, now=t0)) == 1


def test_racing_claimers_never_exceed_the_limit(store, db_url, conn):
    limit(conn, "lim", max_running=3)
    conn.execute("INSERT INTO background_jobs (job_type) SELECT 'lim' FROM generate_series(1, 150)")
    seen: list[int] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def claimer(n: int) -> None:
        try:
            with psycopg.connect(db_url, autocommit=True) as c:
                while not stop.is_set():
                    rows = c.execute(q("claim_jobs"), {
                        "worker_id": f"w{n}", "types": ["lim", "noop"], "limit": 4,
                        "lease_seconds": 30, "now": None}).fetchall()
                    for row in rows:  # finish at once: slots keep changing hands
                        c.execute("UPDATE background_jobs SET status = 'complete' "
                                  "WHERE id = %s", (row[0],))
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=claimer, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    with psycopg.connect(db_url, autocommit=True) as sampler:
        while sampler.execute("SELECT count(*) FROM background_jobs WHERE status <> 'complete'"
                              ).fetchone()[0] and not errors:
            seen.append(running(sampler, "lim"))
    stop.set()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert max(seen) <= 3, max(seen)
    assert running(conn, "lim") == 0


def test_limited_types_are_read_through_their_own_index(conn):
    limit(conn, "lim", max_running=2)
    conn.execute("INSERT INTO background_jobs (job_type, status) "
                 "SELECT 'noop', 'complete' FROM generate_series(1, 5000)")
    conn.execute("INSERT INTO background_jobs (job_type) "
                 "SELECT CASE WHEN n % 2 = 0 THEN 'lim' ELSE 'noop' END "
                 "FROM generate_series(1, 40) AS n")
    conn.execute("ANALYZE background_jobs")
    plan = "\n".join(r[0] for r in conn.execute(b"EXPLAIN " + q("claim_jobs"), {
        "worker_id": "w", "types": ["noop", "lim"], "limit": 4, "lease_seconds": 30,
        "now": None}).fetchall())
    assert "background_jobs_claim_idx" in plan, plan
    assert "background_jobs_pending_type_idx" in plan, plan


def test_declared_limits_are_synced_and_a_dba_setting_survives(store: Store, conn):
    store.sync_job_types([JobTypeRow("lim", max_running=2), JobTypeRow("noop")])
    conn.execute("UPDATE bgjobs_job_types SET max_running = 7 WHERE job_type = 'noop'")
    store.sync_job_types([JobTypeRow("lim", max_running=4, starts_per_second=1.5),
                          JobTypeRow("noop")])
    assert store.limited_types() == {"lim": 1.5, "noop": None}
    rows = dict(conn.execute("SELECT job_type, max_running FROM bgjobs_job_types").fetchall())
    assert rows == {"lim": 4, "noop": 7}
