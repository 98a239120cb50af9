"""Periodic jobs: ticks, exactly one job per tick however many schedulers race, missed ticks."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from bgjobs.core.store import Store
from bgjobs.tasks import registry
from bgjobs.tasks.schedules import InvalidSchedule, check_cron, last_tick, next_tick
from bgjobs.tasks.sync import sync_registry
from bgjobs.worker.duties.schedules import Scheduler

T0 = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)


def schedule(conn: psycopg.Connection, name: str = "s", cron: str = "*/5 * * * *", *,
             job_type: str = "noop", created_at: datetime = T0, **cols: object) -> None:
    names = ["name", "job_type", "cron", "created_at", *cols]
    values = [name, job_type, cron, created_at, *cols.values()]
    conn.execute(f"INSERT INTO bgjobs_schedules ({', '.join(names)}) "
                 f"VALUES ({', '.join(['%s'] * len(names))})", values)


def jobs(conn: psycopg.Connection) -> list[tuple]:
    return conn.execute("SELECT job_type, params, idempotency_key FROM background_jobs "
                        "ORDER BY created_at").fetchall()


def test_cron_ticks_in_a_time_zone_across_dst():
    # Europe/Paris springs forward at 02:00 on 2026-03-29: the 02:30 tick happens at 03:00.
    after = datetime(2026, 3, 28, 12, 0, tzinfo=UTC)
    assert next_tick("30 2 * * *", "Europe/Paris", after) == datetime(2026, 3, 29, 1, 0,
                                                                      tzinfo=UTC)
    assert last_tick("*/5 * * * *", "UTC", T0) == T0
    assert last_tick("*/5 * * * *", "UTC", T0 + timedelta(minutes=4)) == T0


@pytest.mark.parametrize(("cron", "tz", "message"), [
    ("* * * *", "UTC", "5 fields"),
    ("* * * * * *", "UTC", "5 fields"),
    ("61 * * * *", "UTC", "bad cron"),
    ("0 2 * * *", "Mars/Olympus", "unknown time zone"),
])
def test_bad_schedules_are_refused_with_a_reason(cron, tz, message):
    with pytest.raises(InvalidSchedule, match=message):
        check_cron(cron, tz)
    with pytest.raises(ValueError, match=message):
        registry.task("bad_cron_task", cron=cron, timezone=tz)


def test_one_job_per_tick_and_nothing_between_ticks(store: Store, conn):
    schedule(conn, params='{"echo": 7}', priority=-3)
    scheduler = Scheduler(store)
    soonest = scheduler.run({"noop"}, now=T0 + timedelta(minutes=5, seconds=2))
    assert soonest == T0 + timedelta(minutes=10)
    assert jobs(conn) == [("noop", {"echo": 7},
                           "bgjobs-schedule:s:2026-11-30T10:05:00+00:00")]
    scheduler.run({"noop"}, now=T0 + timedelta(minutes=9))
    assert len(jobs(conn)) == 1
    scheduler.run({"noop"}, now=T0 + timedelta(minutes=10))
    assert len(jobs(conn)) == 2
    row = conn.execute("SELECT last_tick, last_job_id = (SELECT id FROM background_jobs "
                       "ORDER BY created_at DESC LIMIT 1) FROM bgjobs_schedules").fetchone()
    assert row == (T0 + timedelta(minutes=10), True)
    assert conn.execute("SELECT priority FROM background_jobs LIMIT 1").fetchone() == (-3,)


def test_racing_schedulers_enqueue_each_tick_once(store: Store, conn, db_url):
    schedule(conn)
    errors: list[BaseException] = []

    def race(minute: int) -> None:
        try:
            Scheduler(store).run({"noop"}, now=T0 + timedelta(minutes=minute, seconds=1))
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    for minute in (5, 10, 15):
        threads = [threading.Thread(target=race, args=(minute,)) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert not errors, errors
    assert [key[-14:] for _, _, key in jobs(conn)] == ["10:05:00+00:00", "10:10:00+00:00",
                                                       "10:15:00+00:00"]


def test_missed_ticks_are_skipped_by_default(store: Store, conn):
    schedule(conn, last_tick=T0)
    # Workers were down from 10:00 to 13:02:30; the latest tick, 13:00, is 150 s late.
    Scheduler(store).run({"noop"}, now=T0 + timedelta(hours=3, minutes=2, seconds=30))
    assert jobs(conn) == []
    # Within a minute of its time a tick is on time, even after an outage.
    Scheduler(store).run({"noop"}, now=T0 + timedelta(hours=3, minutes=5))
    assert len(jobs(conn)) == 1


def test_catch_up_runs_one_job_for_all_missed_ticks(store: Store, conn):
    schedule(conn, last_tick=T0, catch_up=True)
    Scheduler(store).run({"noop"}, now=T0 + timedelta(hours=3, minutes=2, seconds=30))
    assert [key for _, _, key in jobs(conn)] == ["bgjobs-schedule:s:2026-11-30T13:00:00+00:00"]


def test_disabled_other_types_and_bad_rows_are_left_alone(store: Store, conn, caplog):
    schedule(conn, "off", enabled=False)
    schedule(conn, "theirs", job_type="report")
    schedule(conn, "bad", cron="99 * * * *")
    schedule(conn, "bad_params", params='{"echo": 1, "nope": 2}')
    Scheduler(store).run({"noop"}, now=T0 + timedelta(minutes=5))
    assert jobs(conn) == []
    assert "schedule bad is ignored: bad cron expression" in caplog.text
    assert "schedule bad_params: no job for the tick" in caplog.text
    # A bad tick is spent, not retried in a loop.
    assert conn.execute("SELECT last_tick FROM bgjobs_schedules WHERE name = 'bad_params'"
                        ).fetchone() == (T0 + timedelta(minutes=5),)


def test_the_table_refuses_bad_rows(conn):
    with pytest.raises(psycopg.errors.CheckViolation):
        schedule(conn, cron="* * *")
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        schedule(conn, timezone="Mars/Olympus")
    with pytest.raises(psycopg.errors.CheckViolation):
        schedule(conn, name="no spaces please")
    assert conn.execute("SELECT count(*) FROM bgjobs_schedules").fetchone() == (0,)


def test_code_schedules_are_synced_and_sql_ones_win(store: Store, conn):
    @registry.task("nightly_sync_test", cron="0 2 * * *")
    def nightly(ctx):
        return None

    try:
        schedule(conn, "sql_owned", job_type="noop", cron="0 3 * * *")
        tasks = {"nightly_sync_test": registry.get("nightly_sync_test"),
                 "noop": registry.get("noop")}
        sync_registry(store, tasks, "Europe/Paris")
        sync_registry(store, tasks, "Europe/Paris")  # idempotent
        rows = conn.execute("SELECT name, job_type, cron, timezone, source "
                            "FROM bgjobs_schedules ORDER BY name").fetchall()
        assert rows == [("nightly_sync_test", "nightly_sync_test", "0 2 * * *",
                         "Europe/Paris", "code"),
                        ("sql_owned", "noop", "0 3 * * *", "UTC", "sql")]
        # The task loses its cron: its code schedule goes; SQL ones stay.
        tasks["nightly_sync_test"] = registry.Task("nightly_sync_test", nightly)
        sync_registry(store, tasks)
        assert [r.name for r in store.schedules()] == ["sql_owned"]
    finally:
        registry._TASKS.pop("nightly_sync_test", None)
