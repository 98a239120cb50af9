"""The DBA's SQL: views and functions work from plain SQL with no Python."""

from __future__ import annotations

from datetime import timedelta


def one(conn, sql, *args):
    return conn.execute(sql, args).fetchone()


def test_cancel_and_requeue_functions(conn):
    job = one(conn, "INSERT INTO background_jobs (job_type) VALUES ('noop') RETURNING id")[0]
    assert one(conn, "SELECT status FROM bgjobs_cancel(%s)", job) == ("cancelled",)
    assert one(conn, "SELECT count(*) FROM bgjobs_cancel(%s)", job) == (0,)  # already finished
    assert one(conn, "SELECT finished_at IS NOT NULL FROM background_jobs WHERE id = %s", job)[0]
    status, finished = one(conn, "SELECT status, finished_at FROM bgjobs_requeue(%s)", job)
    assert (status, finished) == ("pending", None)
    assert one(conn, "SELECT count(*) FROM bgjobs_requeue(%s)", job) == (0,)  # already pending


def test_cancel_function_with_a_user_only_touches_that_users_job(conn):
    uid = one(conn, "INSERT INTO bgjobs_users (name) VALUES ('u') RETURNING id")[0]
    job = one(conn, "INSERT INTO background_jobs (job_type, user_id) VALUES ('noop', %s) "
                    "RETURNING id", uid)[0]
    assert one(conn, "SELECT count(*) FROM bgjobs_cancel(%s, %s)", job, uid + 1) == (0,)
    assert one(conn, "SELECT count(*) FROM bgjobs_cancel(%s, %s)", job, uid) == (1,)


def test_reap_takes_back_stale_jobs_and_ends_them_when_attempts_run_out(conn):
    # Leases of 2 s: silence counts from the Postgres start at the earliest (011), and the test
    # cluster may have started less than a longer lease ago.
    conn.execute("SELECT pg_sleep(greatest(0, 3 - extract(epoch FROM now() - "
                 "pg_postmaster_start_time())))")
    conn.execute(
        "INSERT INTO background_jobs (job_type, status, attempts, max_attempts, worker_id, "
        " heartbeat_at, lease_seconds, params) VALUES "
        "('noop', 'running', 1, 3, 'dead:1', now() - interval '5 min', 2, '{\"n\": 1}'),"
        "('noop', 'running', 3, 3, 'dead:2', now() - interval '5 min', 2, '{\"n\": 2}'),"
        "('noop', 'running', 1, 3, 'alive', now(), 30, '{\"n\": 3}')"
    )
    stuck = conn.execute("SELECT worker_id FROM bgjobs_stuck ORDER BY worker_id").fetchall()
    assert stuck == [("dead:1",), ("dead:2",)]
    reaped = conn.execute("SELECT status FROM bgjobs_reap() ORDER BY status").fetchall()
    assert reaped == [("error",), ("pending",)]
    rows = dict(conn.execute("SELECT params->>'n', status FROM background_jobs").fetchall())
    assert rows == {"1": "pending", "2": "error", "3": "running"}
    result = one(conn, "SELECT result FROM background_jobs WHERE params->>'n' = '2'")[0]
    assert result["error"] == "WorkerLost"
    assert conn.execute("SELECT * FROM bgjobs_stuck").fetchall() == []
    # "now" is a parameter: an hour later the live job is stale too.
    later = conn.execute("SELECT count(*) FROM bgjobs_reap(now() + interval '1 hour')").fetchone()
    assert later == (1,)


def test_purge_deletes_only_old_finished_jobs(conn):
    conn.execute(
        "INSERT INTO background_jobs (job_type, status, finished_at) VALUES "
        "('noop', 'complete', now() - interval '10 days'),"
        "('noop', 'error', now() - interval '10 days'),"
        "('noop', 'complete', now() - interval '1 hour'),"
        "('noop', 'pending', NULL)"
    )
    assert one(conn, "SELECT bgjobs_purge(interval '7 days')") == (2,)
    assert one(conn, "SELECT count(*) FROM background_jobs") == (2,)
    later = one(conn, "SELECT bgjobs_purge(%s, now() + interval '30 days')", timedelta(days=7))
    assert later == (1,)


def test_summary_view_counts_and_ages(conn):
    conn.execute(
        "INSERT INTO background_jobs (job_type, status, created_at) VALUES "
        "('a', 'pending', now() - interval '2 hours'), ('a', 'pending', now()),"
        "('a', 'complete', now()), ('b', 'running', now())"
    )
    rows = conn.execute("SELECT job_type, status, jobs, oldest_pending_age FROM bgjobs_summary "
                        "ORDER BY 1, 2").fetchall()
    assert [(r[0], r[1], r[2]) for r in rows] == [("a", "complete", 1), ("a", "pending", 2),
                                                  ("b", "running", 1)]
    assert rows[1][3] >= timedelta(hours=2) and rows[0][3] is None
