"""bgjobs.core.channels without a database: the payloads each channel carries, parsed and
encoded; the connection names; the one line a LISTEN behind a transaction pooler says."""

from __future__ import annotations

import json
import uuid

import psycopg
import pytest
from psycopg_pool import PoolTimeout

from bgjobs.core import channels
from bgjobs.core.channels import CONTROL, parse_progress, parse_taken_back
from bgjobs.core.db import is_outage


def test_parse_payload_accepts_both_shapes_and_rejects_the_rest() -> None:
    job_id = uuid.uuid4()
    full = {"id": str(job_id), "user_id": 7, "job_type": "noop", "status": "running",
            "version": 3, "progress": {"current": 1}}
    assert parse_progress(json.dumps(full)) == {**full, "id": job_id}
    assert parse_progress(json.dumps({"id": str(job_id)})) == {"id": job_id}
    for bad in ["", "not json", "[]", "{}", '{"id": "nope"}', json.dumps({**full, "version": "3"}),
                json.dumps({**full, "status": "exploded"}), json.dumps({**full, "user_id": "7"}),
                json.dumps({**full, "progress": [1]})]:
        assert parse_progress(bad) is None, bad


def test_payloads_parse_and_junk_is_dropped_with_a_log_line(caplog):
    job_id = "6f1f4c1e-2b1e-4f43-9a65-0d7c7f0b3c11"
    assert parse_taken_back(json.dumps({"id": job_id, "attempt": 2})) == {
        "id": job_id, "attempt": 2}
    for junk in ["", "{}", '{"id": "x", "attempt": 1}', json.dumps({"id": job_id}),
                 json.dumps({"id": job_id, "attempt": "2"}), "[1, 2]"]:
        assert parse_taken_back(junk) is None
    assert f"dropped an unreadable {CONTROL} payload" in caplog.text


def test_what_is_encoded_parses_back_to_the_same_payload():
    ids = [uuid.uuid4(), uuid.uuid4()]
    progress = {"id": ids[0], "user_id": None, "job_type": "noop", "status": "complete",
                "version": 9, "progress": {"current": 3, "total": 3}}
    assert parse_progress(channels.encode(progress)) == progress
    assert parse_progress(channels.encode({"ids": ids, "user_id": 4})) == {"ids": ids,
                                                                           "user_id": 4}
    assert parse_taken_back(channels.encode({"id": ids[1], "attempt": 1})) == {
        "id": str(ids[1]), "attempt": 1}
    assert channels.parse_auth(channels.encode({"user_id": 5})) == {"user_id": 5}
    for junk in ["", "[]", "{}", '{"user_id": "5"}', '{"user_id": null}']:
        assert channels.parse_auth(junk) is None, junk


def test_every_connection_is_named_by_one_scheme():
    assert channels.application_name("api") == "bgjobs-api"
    assert channels.WORKER_LISTEN == "bgjobs-worker-listen"
    assert channels.WORKER_LISTEN_TYPED == "bgjobs-worker-listen-typed"
    assert channels.EVENTS_LISTEN == "bgjobs-events-listen"
    assert channels.WAIT == "bgjobs-wait"


def test_the_no_session_line_names_the_setting_and_never_the_password():
    line = channels.no_session("postgresql://app:s3cret@pooler.internal:6432/shop", "LISTEN")
    assert "\n" not in line
    assert "pooler.internal:6432/shop" in line and "BGJOBS_DIRECT_URL" in line
    assert "s3cret" not in line


@pytest.mark.parametrize(("error", "outage"), [
    (psycopg.OperationalError("server closed the connection unexpectedly"), True),
    (psycopg.errors.AdminShutdown("terminating connection due to administrator command"), True),
    (psycopg.errors.CannotConnectNow("the database system is starting up"), True),
    (psycopg.errors.TooManyConnections("too many clients"), True),
    (psycopg.errors.ConnectionFailure("connection failure"), True),
    (PoolTimeout("no connection"), True),
    # Postgres answered: not an outage, whatever psycopg's class for it.
    (psycopg.errors.ProtocolViolation("bind message supplies 2 parameters, but prepared "
                                      "statement \"_pg3_3\" requires 8"), False),
    (psycopg.errors.QueryCanceled("canceling statement due to statement timeout"), False),
    (psycopg.errors.LockNotAvailable("could not obtain lock"), False),
    (psycopg.errors.InvalidSqlStatementName('prepared statement "_pg3_0" does not exist'),
     False),
    (ValueError("not a database error"), False),
    # PgBouncer's own ERRORs (08P01) when it has no server: an outage; others are not.
    *[(psycopg.errors.ProtocolViolation(message), True) for message in (
        "server login has been failing, try again later (server_login_retry)",
        "query_wait_timeout", "server conn crashed?", "pgbouncer cannot connect to server",
        "invalid server parameter")],
])
def test_only_a_database_out_of_reach_is_an_outage(error: BaseException, outage: bool):
    assert is_outage(error) is outage
