"""`bgjobs user create --admin`, `bgjobs user admin`, `bgjobs schedules [run NAME]`."""

from __future__ import annotations

import json
import uuid

from tests.e2e.test_cli import assert_one_line_error, bgjobs


def test_admins_are_made_and_unmade(db_url, store):
    done = bgjobs(db_url, "user", "create", "root", "--admin")
    assert done.returncode == 0 and "created admin root" in done.stdout
    assert store.user_for_token(done.stdout.strip().splitlines()[-1]).is_admin
    store.create_user("plain")
    assert "now an admin" in bgjobs(db_url, "user", "admin", "plain").stdout
    assert store.get_user("plain").is_admin
    assert "no longer" in bgjobs(db_url, "user", "admin", "plain", "--remove").stdout
    assert not store.get_user("plain").is_admin
    assert_one_line_error(bgjobs(db_url, "user", "admin", "nobody"), "no user 'nobody'")


def test_schedules_list_with_next_run_and_run_now(db_url, store, conn):
    assert "no schedules" in bgjobs(db_url, "schedules").stdout
    conn.execute("INSERT INTO bgjobs_schedules (name, job_type, cron, timezone, params) VALUES "
                 "('hourly-echo', 'noop', '17 * * * *', 'Asia/Tokyo', '{\"echo\": 3}'), "
                 "('broken', 'noop', '99 * * * *', 'UTC', '{}')")
    listing = bgjobs(db_url, "schedules")
    assert listing.returncode == 0, listing.stderr
    line = next(ln for ln in listing.stdout.splitlines() if ln.startswith("hourly-echo"))
    assert ":17:00" in line and "Asia/Tokyo" in line and "sql" in line
    assert "invalid" in next(ln for ln in listing.stdout.splitlines() if ln.startswith("broken"))
    rows = [json.loads(ln) for ln in bgjobs(db_url, "schedules", "--json").stdout.splitlines()]
    assert rows[1]["name"] == "hourly-echo" and rows[1]["next_run"].endswith(":17:00+00:00")
    assert "bad cron" in rows[0]["problem"]

    done = bgjobs(db_url, "schedules", "run", "hourly-echo")
    assert done.returncode == 0, done.stderr
    job = store.get_job(uuid.UUID(done.stdout.strip()))
    assert (job.job_type, job.params, job.status) == ("noop", {"echo": 3}, "pending")
    assert conn.execute("SELECT last_tick FROM bgjobs_schedules WHERE name = 'hourly-echo'"
                        ).fetchone() == (None,)
    assert_one_line_error(bgjobs(db_url, "schedules", "run", "nope"), "no schedule 'nope'")
