"""Limits and periodic jobs across several real `bgjobs worker` supervisors."""

from __future__ import annotations

import time

import psycopg

from tests.e2e import test_workers
from tests.procs import wait_until

start_worker = test_workers.start_worker  # the same fixture: real `bgjobs worker` processes


def test_three_supervisors_never_run_more_than_the_limit(db_url, store, start_worker):
    workers = [start_worker(db_url, "--concurrency", "2") for _ in range(3)]
    with psycopg.connect(db_url, autocommit=True) as c:
        c.execute("INSERT INTO background_jobs (job_type, params) "
                  "SELECT 'limited', '{\"seconds\": 0.15}' FROM generate_series(1, 24)")
        samples: list[int] = []

        def drained() -> bool:
            counts = dict(c.execute("SELECT status, count(*) FROM background_jobs "
                                    "GROUP BY status").fetchall())
            samples.append(counts.get("running", 0))
            return counts.get("complete") == 24

        wait_until(drained, 90, "24 limited jobs complete", workers[0])
        rows = c.execute("SELECT worker_id FROM background_jobs").fetchall()
    assert max(samples) <= 2, max(samples)
    assert len(samples) > 20  # the table was watched while it drained
    assert len({w for (w,) in rows}) >= 2  # more than one machine took part


def test_a_due_tick_is_enqueued_once_by_three_supervisors(db_url, store, start_worker):
    workers = [start_worker(db_url, "--concurrency", "1", "--poll-interval", "1s",
                            "--lease", "3s") for _ in range(3)]
    with psycopg.connect(db_url, autocommit=True) as c:
        # Daily at this very minute, made two minutes ago: a tick due now, for all three (and
        # the next one is a day away). Late in a minute, wait for the next: a tick the
        # supervisors first see over a minute after its time is skipped as missed
        # (MISFIRE_GRACE), which is not what this test is about.
        second = c.execute("SELECT extract(second FROM clock_timestamp())").fetchone()[0]
        if second > 40:
            time.sleep(61 - float(second))
        c.execute("INSERT INTO bgjobs_schedules (name, job_type, cron, params, created_at) "
                  "SELECT 'daily', 'noop', "
                  "to_char(now() AT TIME ZONE 'UTC', 'FMMI FMHH24 * * *'), '{\"echo\": 1}', "
                  "now() - interval '2 minutes'")

        wait_until(lambda: c.execute("SELECT count(*) FROM background_jobs").fetchone()[0],
                   30, "the tick's job", workers[0])
        # Each supervisor heartbeats every second (lease/3) and reads the schedules every
        # second (poll): once all have heartbeat well after the job, all have seen the tick.
        wait_until(lambda: c.execute(
            "SELECT count(*) FROM bgjobs_workers WHERE heartbeat_at > "
            "(SELECT created_at FROM background_jobs) + interval '2.5 seconds'").fetchone()[0]
            == 3, 30, "three heartbeats after the tick", workers[0])
        jobs = c.execute("SELECT params, idempotency_key FROM background_jobs").fetchall()
        code = c.execute("SELECT job_type, cron, timezone, source FROM bgjobs_schedules "
                         "WHERE name = 'nightly'").fetchone()
        alive = c.execute("SELECT count(*) FROM bgjobs_workers").fetchone()[0]
    assert len(jobs) == 1, jobs
    assert jobs[0][0] == {"echo": 1} and jobs[0][1].startswith("bgjobs-schedule:daily:")
    assert code == ("nightly", "0 2 * * *", "Europe/Paris", "code")
    assert alive == 3
    logs = "".join(w.output() for w in workers)
    assert logs.count("schedule daily: enqueued job") == 1
    # A clean stop removes the worker's row; the others stay.
    assert workers[0].stop() == 0
    with psycopg.connect(db_url, autocommit=True) as c:
        left = c.execute("SELECT pid FROM bgjobs_workers ORDER BY pid").fetchall()
    assert sorted(p for (p,) in left) == sorted(w.pid for w in workers[1:])
