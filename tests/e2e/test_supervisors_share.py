"""Several supervisors (machines): a job enqueued alone wakes one of them, many wake all."""

from __future__ import annotations

import time

import psycopg

from tests.conftest import wait_for
from tests.e2e.test_workers import start_worker  # noqa: F401


def _done_by(conn: psycopg.Connection, n: int) -> list[str]:
    wait_for(lambda: conn.execute("SELECT count(*) FROM background_jobs WHERE status = "
                                  "'complete'").fetchone()[0] == n, timeout=30)
    return [row[0] for row in conn.execute("SELECT worker_id FROM background_jobs")]


def test_jobs_enqueued_one_at_a_time_fall_to_one_supervisor_and_a_bulk_insert_to_all(
        db_url, start_worker):  # noqa: F811
    # A short lease makes the reaper, which also learns the peers, run every second.
    for _ in range(2):
        start_worker(db_url, "--concurrency", "1", "--lease", "2s")
    time.sleep(1.5)  # each has seen the other
    with psycopg.connect(db_url, autocommit=True) as conn:
        for n in range(12):  # from one connection: the same supervisor each time
            conn.execute("INSERT INTO background_jobs (job_type, params) "
                         "VALUES ('noop', jsonb_build_object('echo', %s::int))", [n])
            time.sleep(0.05)
        workers = _done_by(conn, 12)
        # Every supervisor claimed on every job before; now one does. (At most one job may be
        # caught by the other's fallback poll.)
        assert max(workers.count(w) for w in set(workers)) >= 11, workers
        conn.execute("TRUNCATE background_jobs")
        conn.execute("INSERT INTO background_jobs (job_type, params) "
                     "SELECT 'slow', '{\"seconds\": 0.1, \"step\": 0.05}' "
                     "FROM generate_series(1, 12)")
        assert len(set(_done_by(conn, 12))) == 2
