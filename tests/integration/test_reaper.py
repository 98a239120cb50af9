"""The reaper never takes back a job whose worker is alive (011_reaper_outages.sql): not its own
jobs, and not anyone's in the first lease after Postgres (re)started, when nobody could have
heartbeaten while it was down."""

from __future__ import annotations

from datetime import timedelta

import psycopg

from bgjobs.core.db import make_pool
from bgjobs.core.store import Store
from tests.conftest import add_job


def test_a_reaper_leaves_its_own_jobs_alone(store: Store, conn):
    job = add_job(store, "noop")
    store.claim("host:1", ["noop"], lease_seconds=30)
    later = conn.execute("SELECT now() + interval '5 minutes'").fetchone()[0]
    assert store.reap_stale(now=later, reaper="host:1") == []
    reaped = store.reap_stale(now=later, reaper="host:2")
    assert [(r["id"], r["status"]) for r in reaped] == [(job.id, "pending")]


def test_a_reaper_takes_back_its_own_jobs_it_does_not_run(store: Store, conn):
    """A row naming a live worker for a job it no longer runs (its completion was lost with an
    asynchronous primary, 014_reaper_own_lost_jobs.sql): with no other worker, only it can
    take it back."""
    running, finished = add_job(store, "noop"), add_job(store, "noop")
    store.claim("host:1", ["noop"], lease_seconds=30, limit=2)
    later = conn.execute("SELECT now() + interval '5 minutes'").fetchone()[0]
    reaped = store.reap_stale(now=later, reaper="host:1", running=[str(running.id)])
    assert [(r["id"], r["status"]) for r in reaped] == [(finished.id, "pending")]
    assert store.reap_stale(now=later, reaper="host:1", running=[]) != []


def test_silence_counts_from_the_postgres_start_at_the_earliest(private_cluster):
    url = private_cluster.url()
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("INSERT INTO background_jobs (job_type) VALUES ('noop')")
        c.execute("UPDATE background_jobs SET status = 'running', worker_id = 'host:1', "
                  "attempts = 1, lease_seconds = 30, started_at = now() - interval '1 hour', "
                  "heartbeat_at = now() - interval '1 hour'")  # silent for 120 leases
    private_cluster.stop()  # an outage far longer than the lease
    private_cluster.ensure_running()
    pool = make_pool(url, min_size=1, max_size=1, open_wait=True)
    try:
        store = Store(pool)
        with psycopg.connect(url, autocommit=True) as c:
            started, now = c.execute("SELECT pg_postmaster_start_time(), now()").fetchone()
            assert c.execute("SELECT count(*) FROM bgjobs_stuck").fetchone() == (0,)
        assert store.reap_stale(now=now, reaper="host:2") == []  # host:1 may be on its way back
        unheard = started + timedelta(seconds=31)  # a whole lease since the start, no heartbeat
        assert [r["status"] for r in store.reap_stale(now=unheard, reaper="host:2")] == [
            "pending"]
    finally:
        pool.close()
