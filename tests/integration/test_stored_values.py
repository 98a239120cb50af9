"""What the tables take, every reader reads (issue 17).

Times no reader can represent are refused when written, through the API, ``bgjobs.enqueue``,
the CLI and plain SQL; a row holding one anyway (written before the checks) never takes a list
down: it is shown with the value null and named in ``unreadable``. Every other column a DBA
may write (JSON of any type, integers at their extremes) leaves the user's list, the operator
view, the CLI and a worker's claim working.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from uuid import UUID

import psycopg
import pytest

import bgjobs
from bgjobs import cli
from bgjobs.core import migrate
from bgjobs.core.connections import translate_errors
from bgjobs.core.errors import UnreadableValue
from bgjobs.core.jobs import PARKED
from bgjobs.core.store import Store
from bgjobs.server import errors
from bgjobs.server.events_db import EventsDb, make_pool
from bgjobs.tasks.enqueue import InvalidRequest
from tests.api_task_fixtures import Api, api_fixture, snapshot  # noqa: F401
from tests.conftest import add_job, doc_code

#: Every timestamp column of bgjobs's tables (012_readable_times.sql).
TIME_COLUMNS = [
    ("background_jobs", "created_at"), ("background_jobs", "updated_at"),
    ("background_jobs", "run_after"), ("background_jobs", "heartbeat_at"),
    ("background_jobs", "started_at"), ("background_jobs", "finished_at"),
    ("bgjobs_users", "created_at"), ("bgjobs_api_tokens", "created_at"),
    ("bgjobs_api_tokens", "revoked_at"), ("bgjobs_sessions", "created_at"),
    ("bgjobs_sessions", "expires_at"), ("bgjobs_sessions", "ended_at"),
    ("bgjobs_job_types", "rate_at"), ("bgjobs_schedules", "last_tick"),
    ("bgjobs_schedules", "created_at"), ("bgjobs_schedules", "updated_at"),
    ("bgjobs_runtime_roles", "granted_at"),
    ("bgjobs_workers", "started_at"), ("bgjobs_workers", "heartbeat_at"),
]
UNREPRESENTABLE = ["infinity", "-infinity", "10000-01-01 13:59:59+00",
                   "0001-12-31 10:00:00+00 BC", "9999-12-31 23:59:59-14"]


def cli_run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], url: str,
            *args: str) -> tuple[int, str, str]:
    """`bgjobs ARGS` in this process, against ``url``: (exit code, stdout, stderr)."""
    monkeypatch.setenv("DATABASE_URL", url)
    capsys.readouterr()
    code = cli.main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def as_admin(api: Api, store: Store) -> dict[str, str]:
    store.set_admin(api.alice.name, True)
    return api.alice.headers


# Refused when written ------------------------------------------------------------------------


@pytest.mark.parametrize("when", ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00",
                                  "9999-12-31T00:00:00Z", "0001-01-01T23:59:59Z"])
def test_the_api_refuses_a_run_after_no_reader_can_represent(api: Api, when: str) -> None:
    before = snapshot(api.url)
    r = api.client.post("/api/jobs", json={"type": "noop", "run_after": when},
                        headers=api.alice.headers)
    assert r.status_code == 422, r.json
    assert r.json["error"]["code"] == "invalid_request"
    assert r.json["error"]["message"].startswith(
        "run_after must be between 0001-01-02T00:00:00Z and 9999-12-30T23:59:59Z")
    assert snapshot(api.url) == before
    assert api.client.get("/api/jobs", headers=api.alice.headers).status_code == 200


def test_the_api_takes_the_last_and_first_times_and_any_offset_python_takes(api: Api) -> None:
    for when in ["9999-12-30T23:59:59.999999Z", "0001-01-02T00:00:00Z",
                 "2030-01-01T00:00:00+23:59"]:  # Postgres refuses +23:59 itself: sent in UTC
        r = api.client.post("/api/jobs", json={"type": "noop", "run_after": when},
                            headers=api.alice.headers)
        assert r.status_code == 202, r.json
        got = api.client.get(f"/api/jobs/{r.json['id']}", headers=api.alice.headers).json
        assert datetime.fromisoformat(got["run_after"]) == datetime.fromisoformat(when)
    assert len(api.client.get("/api/jobs", headers=api.alice.headers).json["jobs"]) == 3


def test_enqueue_refuses_it_with_a_bgjobs_error(store: Store, conn: psycopg.Connection) -> None:
    late = datetime(9999, 12, 31, 23, 59, tzinfo=timezone(timedelta(hours=-14)))
    with pytest.raises(InvalidRequest, match=r"run_after must be between 0001-01-02T00:00:00Z"):
        bgjobs.enqueue("noop", {}, run_after=late, store=store)
    with pytest.raises(bgjobs.BgjobsError):
        bgjobs.enqueue("noop", {}, run_after=datetime(1, 1, 1, tzinfo=UTC), store=store)
    assert conn.execute("SELECT count(*) FROM background_jobs").fetchone() == (0,)


def test_the_cli_refuses_it_in_one_line(db_url: str, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str],
                                        conn: psycopg.Connection) -> None:
    code, out, err = cli_run(monkeypatch, capsys, db_url, "enqueue", "noop",
                             "--run-after", "9999-12-31T23:59:59-14:00")
    assert code == 1 and out == ""
    assert err.startswith("bgjobs: run_after must be between") and err.count("\n") == 1, err
    code, _, err = cli_run(monkeypatch, capsys, db_url, "enqueue", "noop", "--run-after", "soon")
    assert code == 1 and err == "bgjobs: --run-after is not an ISO 8601 time: 'soon'\n"
    assert conn.execute("SELECT count(*) FROM background_jobs").fetchone() == (0,)
    code, out, _ = cli_run(monkeypatch, capsys, db_url, "enqueue", "noop",
                           "--run-after", "2030-01-01T09:00:00+02:00")
    assert code == 0
    assert conn.execute("SELECT run_after FROM background_jobs WHERE id = %s",
                        (UUID(out.strip()),)).fetchone() == (datetime(2030, 1, 1, 7, tzinfo=UTC),)


def _row_writes(conn: psycopg.Connection, store: Store) -> dict[str, str]:
    """For each table, an UPDATE template (``{col}``, ``%s``) of one row of it."""
    user, _token = store.create_user("dba")
    store.start_session(store.user_for_token(_token), 60)  # type: ignore[arg-type]
    job = add_job(store, user_id=user.id)
    conn.execute("UPDATE background_jobs SET status = 'complete' WHERE id = %s", (job.id,))
    conn.execute("INSERT INTO bgjobs_job_types (job_type) VALUES ('noop') ON CONFLICT DO NOTHING")
    conn.execute("INSERT INTO bgjobs_schedules (name, job_type, cron) VALUES ('s', 'noop', "
                 "'* * * * *')")
    store.worker_heartbeat("w1", "m", 1, 1, 0, ["noop"], 30)
    conn.execute("INSERT INTO bgjobs_runtime_roles (role_name) VALUES ('app') "
                 "ON CONFLICT DO NOTHING")
    return {
        "background_jobs": f"UPDATE background_jobs SET {{col}} = %s WHERE id = '{job.id}'",
        "bgjobs_users": "UPDATE bgjobs_users SET {col} = %s",
        "bgjobs_api_tokens": "UPDATE bgjobs_api_tokens SET {col} = %s",
        "bgjobs_sessions": "UPDATE bgjobs_sessions SET {col} = %s",
        "bgjobs_job_types": "UPDATE bgjobs_job_types SET {col} = %s",
        "bgjobs_schedules": "UPDATE bgjobs_schedules SET {col} = %s",
        "bgjobs_workers": "UPDATE bgjobs_workers SET {col} = %s",
        "bgjobs_runtime_roles": "UPDATE bgjobs_runtime_roles SET {col} = %s",
    }


def test_plain_sql_refuses_it_with_a_check_that_says_why(store: Store,
                                                        conn: psycopg.Connection) -> None:
    writes = _row_writes(conn, store)
    for table, column in TIME_COLUMNS:
        if (table, column) == ("bgjobs_schedules", "updated_at"):
            continue  # its trigger sets it on every write, whatever was written
        # background_jobs.updated_at is the trigger's to set on UPDATE: an INSERT writes it.
        for value in UNREPRESENTABLE:
            sql = writes[table].format(col=column)
            if column == "updated_at":
                sql = _insert_with(table, column)
            with pytest.raises(psycopg.errors.CheckViolation) as refused:
                conn.execute(sql, (value,))
                pytest.fail(f"{table}.{column} took {value}")
            name = refused.value.diag.constraint_name
            expected = f"{table}_{column}_between_0001_01_02_and_9999_12_30"[:63]
            assert name == expected, (table, value)
            assert name in str(refused.value)
        conn.execute(writes[table].format(col=column) if column != "updated_at"
                     else _insert_with(table, column), ("9999-12-30 23:59:59+00",))


def _insert_with(table: str, column: str) -> str:
    assert table == "background_jobs"
    return f"INSERT INTO background_jobs (job_type, {column}) VALUES ('noop', %s)"


def test_every_timestamp_column_of_bgjobs_tables_is_checked(conn: psycopg.Connection) -> None:
    columns = conn.execute(
        """SELECT c.relname, a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
           WHERE a.atttypid = 'timestamptz'::regtype AND c.relkind = 'r' AND NOT a.attisdropped
             AND (c.relname = 'background_jobs' OR c.relname LIKE 'bgjobs\\_%')
             AND c.relname <> 'bgjobs_migrations'
             AND c.relnamespace = (SELECT relnamespace FROM pg_class
                                   WHERE oid = 'background_jobs'::regclass)""").fetchall()
    assert sorted(columns) == sorted(TIME_COLUMNS)
    checks = {r[0] for r in conn.execute(
        "SELECT conname FROM pg_constraint WHERE conname ~ '_between_0001_01_02_and_9999'"
        " AND convalidated")}
    # Postgres cuts names at 63 bytes (bgjobs_runtime_roles' is one longer).
    assert checks == {f"{t}_{c}_between_0001_01_02_and_9999_12_30"[:63] for t, c in TIME_COLUMNS}


# Parking a job -------------------------------------------------------------------------------


def test_a_parked_job_waits_is_listed_and_runs_once_let_go(api: Api, store: Store,
                                                           conn: psycopg.Connection) -> None:
    parked = bgjobs.enqueue("noop", {}, user_id=api.alice.id, run_after=PARKED, store=store)
    by_sql = add_job(store, user_id=api.alice.id)
    conn.execute(doc_code("dba.md", "### Parking a job", "sql").replace("'5d0c…'", "%s"),
                 (by_sql.id,))
    assert store.claim_specs("w", ["noop"], limit=10) == []
    listed = api.client.get("/api/jobs", headers=api.alice.headers).json["jobs"]
    assert {j["id"] for j in listed} == {str(parked.id), str(by_sql.id)}
    assert all(j["run_after"].startswith("9999-12-30") for j in listed)
    conn.execute("UPDATE background_jobs SET run_after = now() WHERE id = %s", (by_sql.id,))
    assert [c.id for c in store.claim_specs("w", ["noop"], limit=10)] == [by_sql.id]


# Rows no reader can represent, written before the checks ------------------------------------


@contextmanager
def unchecked(conn: psycopg.Connection, table: str, *columns: str) -> Iterator[None]:
    """Lets these columns take anything, as before 012 (or a restore without the checks); puts
    the checks back after, the rows that break them deleted."""
    names = [f"{table}_{c}_between_0001_01_02_and_9999_12_30"[:63] for c in columns]
    defs = [conn.execute("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = %s",
                         (n,)).fetchone()[0] for n in names]
    for name in names:
        conn.execute(f"ALTER TABLE {table} DROP CONSTRAINT {name}")
    try:
        yield
    finally:
        for name, definition in zip(names, defs, strict=True):
            check = definition.removesuffix(" NOT VALID").removeprefix("CHECK ")
            conn.execute(f"DELETE FROM {table} WHERE NOT {check}")
            conn.execute(f"ALTER TABLE {table} ADD CONSTRAINT {name} {definition}")


def _events_reads(url: str, job_id: UUID, user_id: int) -> tuple[dict, list[dict]]:
    """The events service's reads of the job: one job, and the user's jobs after a reconnect."""
    async def read() -> tuple[dict, list[dict]]:
        pool = make_pool(url, max_size=2)
        await pool.open(wait=True)
        try:
            db = EventsDb(pool)
            one = await db.get_job(job_id, user_id)
            assert one is not None
            since = datetime.now(UTC) - timedelta(days=1)
            return one.to_json(), [j.to_json() for j in await db.user_jobs_since([user_id], since)]
        finally:
            await pool.close()

    return asyncio.run(read())


@pytest.mark.parametrize("value", UNREPRESENTABLE)
@pytest.mark.parametrize("column", ["run_after", "created_at", "finished_at", "started_at",
                                    "heartbeat_at"])
def test_a_row_no_reader_can_represent_is_listed_with_a_note(
        api: Api, store: Store, conn: psycopg.Connection, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture, column: str,
        value: str) -> None:
    headers = as_admin(api, store)
    good = add_job(store, user_id=api.alice.id)
    bad = add_job(store, user_id=api.alice.id)
    with unchecked(conn, "background_jobs", column):
        if column == "finished_at":
            conn.execute("UPDATE background_jobs SET status = 'complete' WHERE id = %s",
                         (bad.id,))
        if column in ("started_at", "heartbeat_at"):  # a running job, as the reaper sees it
            conn.execute("UPDATE background_jobs SET status = 'running', worker_id = 'gone', "
                         "attempts = 1 WHERE id = %s", (bad.id,))
        conn.execute(f"UPDATE background_jobs SET {column} = %s WHERE id = %s", (value, bad.id))
        caplog.set_level(logging.WARNING)

        mine = api.client.get("/api/jobs", headers=headers)
        assert mine.status_code == 200, mine.json
        shown = {j["id"]: j for j in mine.json["jobs"]}
        assert set(shown) == {str(good.id), str(bad.id)}
        assert shown[str(bad.id)].get(column) is None  # heartbeat_at is not shown at all
        assert shown[str(bad.id)]["unreadable"] == [column]
        assert "unreadable" not in shown[str(good.id)]
        assert f"job {bad.id}: stored value(s) bgjobs cannot read" in caplog.text

        one = api.client.get(f"/api/jobs/{bad.id}", headers=headers)
        assert one.status_code == 200 and one.json["unreadable"] == [column]
        admin = api.client.get("/api/admin/jobs", headers=headers)
        assert admin.status_code == 200 and len(admin.json["jobs"]) == 2
        assert api.client.get("/api/admin/overview", headers=headers).status_code == 200
        assert api.client.get("/metrics", headers={"Authorization":
                                                   "Bearer metrics-test-token"}).status_code == 200

        code, out, err = cli_run(monkeypatch, capsys, api.url, "jobs")
        assert code == 0, err
        assert f"(unreadable: {column}; see docs/dba.md)" in out
        code, out, _ = cli_run(monkeypatch, capsys, api.url, "jobs", "--json")
        assert code == 0 and len(out.splitlines()) == 2

        event_one, event_all = _events_reads(api.url, bad.id, api.alice.id)
        assert event_one["unreadable"] == [column]
        assert str(good.id) in {j["id"] for j in event_all}

        conn.execute("UPDATE background_jobs SET status = 'pending', run_after = now() "
                     "WHERE id = %s", (good.id,))
        claimed = {c.id for c in store.claim_specs("w", ["noop"], limit=10)}
        assert good.id in claimed
        store.next_due_in(["noop"])  # a worker's sleep: it reads min(run_after)
        store.reap_stale(now=datetime.now(UTC) + timedelta(days=1))
        cancel = api.client.post(f"/api/jobs/{bad.id}/cancel", headers=headers)
        assert cancel.status_code in (200, 409), cancel.json


def test_pages_go_on_past_a_job_whose_created_at_cannot_be_read(
        api: Api, store: Store, conn: psycopg.Connection) -> None:
    jobs = [add_job(store, user_id=api.alice.id) for _ in range(5)]
    with unchecked(conn, "background_jobs", "created_at"):
        for job, value in zip(jobs[:3], ["infinity", "10000-01-01 00:00:00+00",
                                         "0001-12-31 10:00:00+00 BC"], strict=True):
            conn.execute("UPDATE background_jobs SET created_at = %s WHERE id = %s",
                         (value, job.id))
        seen: list[str] = []
        cursor = None
        while True:
            query = "?limit=1" + (f"&cursor={cursor}" if cursor else "")
            page = api.client.get("/api/jobs" + query, headers=api.alice.headers)
            assert page.status_code == 200, page.json
            seen += [j["id"] for j in page.json["jobs"]]
            cursor = page.json["next_cursor"]
            if cursor is None:
                break
        assert sorted(seen) == sorted(str(j.id) for j in jobs) and len(seen) == 5


@pytest.mark.parametrize(("column", "value"), [
    ("result", "1" * 400 + ".5"), ("progress", '{"current": -1e5000}'), ("result", "1" * 5000),
    ("result", "[" * 3000 + "]" * 3000),
    ("params", '{"n": ' + "[" * 3000 + "]" * 3000 + "}"),
])
def test_json_no_reader_can_represent_is_listed_with_a_note_and_claimed(
        api: Api, store: Store, conn: psycopg.Connection, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], column: str, value: str) -> None:
    headers = as_admin(api, store)
    bad = add_job(store, user_id=api.alice.id)
    conn.execute(f"UPDATE background_jobs SET {column} = %s::jsonb WHERE id = %s", (value, bad.id))
    mine = api.client.get("/api/jobs", headers=headers)
    assert mine.status_code == 200
    job = mine.json["jobs"][0]
    assert job["unreadable"] == [column] and job[column] in (None, {})
    assert "Infinity" not in mine.get_data(as_text=True)
    assert api.client.get("/api/admin/jobs", headers=headers).status_code == 200
    assert cli_run(monkeypatch, capsys, api.url, "jobs")[0] == 0
    claimed = store.claim_specs("w", ["noop"], limit=10)
    assert [c.id for c in claimed] == [bad.id]


# Every other column a DBA may write ----------------------------------------------------------

JSON_VALUES = ["null", "0", "-1.5", "1e300", "1e400", '"text"', "true", "[]", '[1, "a", null]',
               '{"a": {"b": [{"c": 1}]}}', '{"current": "x", "total": null}',
               '{"current": 5, "total": 10, "stage": "s"}']
WRITES = (
    [(f"{column} = %s::jsonb", value) for column in ("params", "progress", "result")
     for value in JSON_VALUES]
    + [("progress = NULL", None), ("result = NULL", None)]
    + [(f"priority = {n}", None) for n in (-2147483648, 2147483647)]
    + [(f"attempts = {n}", None) for n in (0, 2147483647)]
    + [(f"max_attempts = {n}", None) for n in (1, 2147483647)]
    + [("lease_seconds = 2147483647", None)]
)


@pytest.mark.parametrize(("assignment", "value"), WRITES,
                         ids=[f"{a.split(' ')[0]}={v if v is not None else a.split('= ')[1]}"
                              for a, v in WRITES])
def test_after_any_dba_write_every_reader_and_the_claim_still_work(
        api: Api, store: Store, conn: psycopg.Connection, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], assignment: str, value: str | None) -> None:
    headers = as_admin(api, store)
    other = add_job(store, user_id=api.alice.id)
    written = add_job(store, user_id=api.alice.id)
    conn.execute(f"UPDATE background_jobs SET {assignment} WHERE id = %s",
                 (value, written.id) if value is not None else (written.id,))

    mine = api.client.get("/api/jobs?limit=200", headers=headers)  # the dashboard's list
    assert mine.status_code == 200, mine.json
    assert {j["id"] for j in mine.json["jobs"]} == {str(other.id), str(written.id)}
    assert all("unreadable" not in j for j in mine.json["jobs"])
    json.loads(mine.get_data(as_text=True))  # strict JSON, as a browser reads it
    assert api.client.get(f"/api/jobs/{written.id}", headers=headers).status_code == 200
    assert api.client.get("/api/admin/jobs", headers=headers).status_code == 200
    assert api.client.get("/api/admin/overview", headers=headers).status_code == 200
    code, out, err = cli_run(monkeypatch, capsys, api.url, "jobs")
    assert code == 0 and str(written.id) in out, err

    claimed = {c.id for c in store.claim_specs("w", ["noop"], limit=10)}
    assert other.id in claimed
    assert store.claim("w2", ["noop"]) == []  # nothing left, and no error
    for action in ("requeue", "cancel", "requeue"):  # the operator view's buttons
        r = api.client.post(f"/api/admin/jobs/{written.id}/{action}", headers=headers)
        assert r.status_code in (200, 409), (action, r.json)
    claimed = {c.id for c in store.claim_specs("w", ["noop"], limit=10)}
    from bgjobs.core.jobs import Attempt  # noqa: PLC0415
    attempts = conn.execute("SELECT id, worker_id, attempts FROM background_jobs "
                            "WHERE status = 'running'").fetchall()
    assert store.release([Attempt(*row) for row in attempts]) == {row[0] for row in attempts}


# Errors on reads -----------------------------------------------------------------------------


def test_a_value_psycopg_cannot_load_is_not_called_a_rejected_write() -> None:
    with pytest.raises(UnreadableValue) as raised, translate_errors():
        raise psycopg.DataError("timestamp too large (after year 10K): 'infinity'")
    answer = errors.answer_for(raised.value)
    assert answer is not None and answer.status == 500 and answer.code == "unreadable_value"
    assert "rejected" not in answer.message and "cannot be read" in answer.message
    with pytest.raises(bgjobs.BgjobsError) as server_side, translate_errors():
        raise psycopg.errors.NumericValueOutOfRange("integer out of range")
    assert errors.answer_for(server_side.value).status == 422  # type: ignore[union-attr]


def _cursor(*items: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(items)).encode()).decode().rstrip("=")


ID = "5d0c0000-0000-4000-8000-00000000000a"
UNREADABLE_QUERIES = [
    "limit=", "limit=%EF%BC%91", "limit=%205", "limit=1_0", "limit=+5", "limit=%D9%A3",
    "limit=99999999999999999999", "cursor=", "cursor=abc",
    "cursor=" + _cursor("2020-01-01T00:00:00+00:00", "\uff10" + ID[1:]),
    "cursor=" + _cursor("\uff12020-01-01T00:00:00+00:00", ID),
    "cursor=" + _cursor("2020-01-01T00:00:00", ID),
    "cursor=" + _cursor("2020-01-01T00:00:00+00:00", ID.upper()),
    "cursor=" + _cursor("10000-02-30 00:00:00+00", ID),
    "cursor=" + _cursor("99999-99-99 00:00:00+00", ID),
    "cursor=" + _cursor("1000000-01-01 00:00:00+00", ID),
    "cursor=" + _cursor("0001-01-01T00:00:00+14:00", ID),
    "cursor=" + _cursor(5, ID),
]


@pytest.mark.parametrize("query", UNREADABLE_QUERIES)
def test_unreadable_query_values_are_one_status_in_the_api(api: Api, query: str) -> None:
    r = api.client.get(f"/api/jobs?{query}", headers=api.alice.headers)
    assert r.status_code == 400, (query, r.json)
    assert r.json["error"]["code"] == "bad_query"


@pytest.mark.parametrize("query", UNREADABLE_QUERIES + [
    "user=99999999999", "since=0001-01-01T00:00:00%2B14:00",
    "until=2020-01-01"])
def test_unreadable_query_values_are_one_status_in_the_operator_view(api: Api, store: Store,
                                                                     query: str) -> None:
    r = api.client.get(f"/api/admin/jobs?{query}", headers=as_admin(api, store))
    assert r.status_code == 400 and r.json["error"]["code"] == "bad_query", (query, r.json)


def test_cursor_offsets_postgres_refuses_are_read_in_utc(api: Api) -> None:
    r = api.client.get("/api/jobs?cursor=" + _cursor("2030-01-01T00:00:00+23:59", ID),
                       headers=api.alice.headers)
    assert r.status_code == 200, r.json


def test_the_flask_extension_answers_them_alike(host_db_url: str) -> None:
    from tests.conftest import add_host_user
    from tests.integration.test_flask_ext import make_app

    user = add_host_user(host_db_url, "q@example.com")
    app, _ = make_app(host_db_url)
    with app.test_client() as client:
        with client.session_transaction() as s:
            s["user_id"] = user
        for query in UNREADABLE_QUERIES:
            r = client.get(f"/jobs?{query}")
            assert r.status_code == 400 and r.json["error"]["code"] == "bad_query", (query,
                                                                                     r.json)
        late = client.post("/jobs", json={"type": "noop", "run_after": "9999-12-31T23:59:59-14:00"},
                           headers={"Origin": "http://localhost"})
        assert late.status_code == 422 and "run_after must be between" in late.json["error"][
            "message"]


# The migration, on a database that already holds such rows -----------------------------------


def test_old_rows_never_fail_the_migration_and_keep_their_order(
        new_database, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    older = tmp_path / "older"
    older.mkdir()
    for m in migrate.discover():
        if m.version < 12:
            (older / m.name).write_text(m.sql)
    url = new_database()
    with psycopg.connect(url) as conn:
        migrate.apply(conn, older)
        parked, oldest, fine = (conn.execute(
            "INSERT INTO background_jobs (job_type, run_after, created_at) VALUES "
            "('noop', %s, %s) RETURNING id", row).fetchone()[0] for row in [
                ("infinity", "2020-01-01 00:00:00+00"), ("2020-01-01 00:00:00+00", "-infinity"),
                ("9999-12-30 23:00:00+00", "2020-01-01 00:00:00+00")])
        conn.commit()
        caplog.set_level(logging.WARNING)
        applied = migrate.apply(conn)
        assert applied == [m.name for m in migrate.discover() if m.version >= 12]
        assert "background_jobs.run_after: 1 row(s) held a time no reader can represent" \
            in caplog.text
        assert "background_jobs.created_at: 1 row(s)" in caplog.text
        rows = {r[0]: r[1:] for r in conn.execute(
            "SELECT id, run_after, created_at FROM background_jobs")}
        assert rows[parked][0] == datetime(9999, 12, 30, 23, 59, 59, 999999, tzinfo=UTC)
        assert rows[oldest][1] == datetime(1, 1, 2, tzinfo=UTC)
        assert rows[fine] == (datetime(9999, 12, 30, 23, tzinfo=UTC),
                              datetime(2020, 1, 1, tzinfo=UTC))
        assert conn.execute("SELECT count(*) FROM pg_constraint WHERE NOT convalidated "
                            "AND conname ~ '_between_0001'").fetchone() == (0,)
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("INSERT INTO background_jobs (job_type, run_after) "
                         "VALUES ('noop', 'infinity')")


def test_a_progress_payload_nested_too_deep_is_dropped_not_a_listener_crash(
        conn: psycopg.Connection, store: Store, listener: psycopg.Connection) -> None:
    from bgjobs.core.channels import parse_progress as parse_payload
    from tests.conftest import drain

    job = add_job(store)
    drain(listener)
    conn.execute("UPDATE background_jobs SET progress = %s::jsonb WHERE id = %s",
                 ('{"a": ' + "[" * 3000 + "]" * 3000 + "}", job.id))
    payloads = [p for channel, p in drain(listener) if channel == "background_jobs_progress"]
    assert payloads and len(payloads[0]) < 7900  # it fits, so it is sent whole
    assert parse_payload(payloads[0]) is None
