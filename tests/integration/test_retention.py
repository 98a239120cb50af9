"""Retention: finished jobs deleted past their age, per type, in batches, one purger at a time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg

from bgjobs.core.store import Store
from bgjobs.core.store_ops import Retention
from bgjobs.worker.duties.retention import Purger

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def finished(conn: psycopg.Connection, job_type: str, status: str, days_ago: float,
             count: int = 1) -> None:
    conn.execute("INSERT INTO background_jobs (job_type, status, finished_at) "
                 "SELECT %s, %s, %s FROM generate_series(1, %s)",
                 (job_type, status, NOW - timedelta(days=days_ago), count))


def left(conn: psycopg.Connection) -> list[tuple]:
    return conn.execute("SELECT job_type, status, count(*) FROM background_jobs "
                        "GROUP BY 1, 2 ORDER BY 1, 2").fetchall()


def test_defaults_keep_complete_and_cancelled_7_days_and_errors_30(store: Store, conn):
    for status in ("complete", "cancelled", "error"):
        finished(conn, "noop", status, 6.9)
        finished(conn, "noop", status, 7.1)
        finished(conn, "noop", status, 29.9)
        finished(conn, "noop", status, 30.1)
    conn.execute("INSERT INTO background_jobs (job_type, status, created_at) "
                 "VALUES ('noop', 'pending', %s)", (NOW - timedelta(days=400),))
    assert store.purge_batch(100, Retention(), now=NOW) == 7
    assert left(conn) == [("noop", "cancelled", 1), ("noop", "complete", 1), ("noop", "error", 3),
                          ("noop", "pending", 1)]


def test_per_type_ages_set_in_sql(store: Store, conn):
    conn.execute("INSERT INTO bgjobs_job_types (job_type, keep_complete, keep_error) "
                 "VALUES ('audit', interval '365 days', NULL), "
                 "('chatter', interval '1 hour', interval '1 hour')")
    finished(conn, "audit", "complete", 100)
    finished(conn, "audit", "error", 31)
    finished(conn, "chatter", "complete", 0.1)
    finished(conn, "chatter", "error", 0.1)
    finished(conn, "chatter", "cancelled", 0.1)
    assert store.purge_batch(100, Retention(), now=NOW) == 3
    assert left(conn) == [("audit", "complete", 1), ("chatter", "cancelled", 1)]


def test_batches_and_one_purger_at_a_time(store: Store, conn, db_url):
    finished(conn, "noop", "complete", 10, count=25)
    assert store.purge_batch(10, Retention(), now=NOW) == 10
    with psycopg.connect(db_url) as other:  # another machine is purging right now
        other.execute("SELECT pg_advisory_xact_lock(hashtext('bgjobs.purger'))")
        assert store.purge_batch(10, Retention(), now=NOW) is None
    assert store.purge_batch(10, Retention(), now=NOW) == 10
    assert store.purge_batch(10, Retention(), now=NOW) == 5


def test_the_purger_works_through_a_backlog_in_batches(store: Store, conn, monkeypatch):
    from bgjobs.worker.duties import retention

    monkeypatch.setattr(retention, "BATCH", 4)
    finished(conn, "noop", "complete", 10, count=9)
    purger = Purger(store, Retention(complete=timedelta(days=1)))
    purger.run(100.0)
    assert purger.next_at == 100.0 + retention.PAUSE  # a full batch: more soon
    purger.run(purger.next_at)
    purger.run(purger.next_at)
    assert left(conn) == []
    assert purger.next_at == 100.0 + 2 * retention.PAUSE + retention.INTERVAL


def test_the_purge_reads_an_index(conn):
    finished(conn, "noop", "complete", 1, count=3000)
    conn.execute("INSERT INTO background_jobs (job_type) SELECT 'noop' "
                 "FROM generate_series(1, 3000)")
    conn.execute("ANALYZE background_jobs")
    plan = "\n".join(r[0] for r in conn.execute(
        "EXPLAIN DELETE FROM background_jobs WHERE id IN (SELECT j.id FROM background_jobs j "
        "WHERE j.finished_at IS NOT NULL AND j.finished_at < %s "
        "ORDER BY j.finished_at LIMIT 500)", (NOW - timedelta(days=7),)).fetchall())
    assert "background_jobs_finished_idx" in plan, plan
