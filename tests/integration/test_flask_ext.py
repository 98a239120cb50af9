"""bgjobs.flask.BgJobs in a host app of the tests' own: the job routes for the host's signed-in
users, their errors, stream URLs, and per-app state."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import psycopg
import pytest
from flask import Flask, jsonify, session
from flask.testing import FlaskClient

import bgjobs
from bgjobs.core.config import ConfigError
from bgjobs.flask import BgJobs
from bgjobs.server import stream_tokens
from tests.api_task_fixtures import EXCLUSIVE
from tests.conftest import add_host_user
from tests.integration.test_api_bad_input import CASES, Case

SECRET = "stream-secret"


def make_app(url: str, events_url: str | None = "http://events.test:9001",
             **config: object) -> tuple[Flask, BgJobs]:
    """A host app: its own sign-in (a session cookie), bgjobs under /jobs."""
    app = Flask("host_app")
    app.config.update(SECRET_KEY="host-secret", BGJOBS_DATABASE_URL=url,
                      BGJOBS_SECRET_KEY=SECRET, **config)
    if events_url:
        app.config["BGJOBS_EVENTS_URL"] = events_url
    ext = BgJobs(app, current_user_id=lambda: session.get("user_id"))

    @app.post("/reports")
    def start_report():
        # A host route: its own row and the job, in one transaction of its own.
        with psycopg.connect(url) as conn:
            conn.execute("UPDATE users SET email = email WHERE id = %s", (ext.user_id(),))
            job = bgjobs.enqueue("noop", {"echo": "report"}, user_id=ext.user_id(), conn=conn)
            if session.get("fail_after_enqueue"):
                raise RuntimeError("the host's own work failed")
        return jsonify({"job_id": str(job.id), "stream": ext.stream_url(job.id)}), 202

    return app, ext


@dataclass
class Host:
    app: Flask
    ext: BgJobs
    client: FlaskClient
    ada: int
    bob: int
    url: str

    def sign_in(self, user_id: int | None) -> None:
        with self.client.session_transaction() as s:
            s.clear()
            if user_id is not None:
                s["user_id"] = user_id

    def post(self, body: dict, **kwargs) -> object:
        return self.client.post("/jobs", json=body, **kwargs)


@pytest.fixture
def host(host_db_url: str) -> Iterator[Host]:
    ada = add_host_user(host_db_url, "ada@example.com")
    bob = add_host_user(host_db_url, "bob@example.com")
    app, ext = make_app(host_db_url)
    with app.test_client() as client:
        client.environ_base["HTTP_ORIGIN"] = "http://localhost"  # as a browser on the app's page
        h = Host(app, ext, client, ada, bob, host_db_url)
        h.sign_in(ada)
        yield h
    ext.close(app)


def jobs_table(url: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT * FROM background_jobs ORDER BY id").fetchall()


def stored(url: str, job_id: str) -> tuple:
    """(user_id, params) of a job, read straight from the table."""
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT user_id, params FROM background_jobs WHERE id = %s",
                            (job_id,)).fetchone()


# The job routes --------------------------------------------------------------------------


def test_create_get_list_cancel_as_the_api_does(host: Host) -> None:
    r = host.post({"type": "noop", "params": {"echo": [1]}, "priority": -3})
    assert r.status_code == 202, r.json
    job = r.json
    assert r.headers["Location"] == f"/jobs/{job['id']}"
    assert job["user_id"] == host.ada and job["status"] == "pending" and job["priority"] == -3
    assert r.headers["Cache-Control"] == "no-store"
    assert host.client.get(f"/jobs/{job['id']}").json == job
    assert stored(host.url, job["id"]) == (host.ada, {"echo": [1]})  # the host's database

    ids = [job["id"]] + [host.post({"type": "noop"}).json["id"] for _ in range(4)]
    seen, cursor = [], None
    while True:
        page = host.client.get("/jobs", query_string={"limit": 2, **(
            {"cursor": cursor} if cursor else {})}).json
        seen += [j["id"] for j in page["jobs"]]
        if (cursor := page["next_cursor"]) is None:
            break
    assert seen == ids[::-1]

    cancelled = host.client.post(f"/jobs/{job['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json["status"] == "cancelled"
    again = host.client.post(f"/jobs/{job['id']}/cancel")
    assert again.status_code == 409 and again.json["error"]["job_id"] == job["id"]


def test_idempotency_keys_and_exclusive_types_answer_as_in_the_api(host: Host) -> None:
    first = host.post({"type": "noop"}, headers={"Idempotency-Key": "k1"})
    replay = host.post({"type": "noop"}, headers={"Idempotency-Key": "k1"})
    assert replay.status_code == 202 and replay.json["id"] == first.json["id"]
    assert replay.headers["Idempotent-Replayed"] == "true"
    active = host.post({"type": EXCLUSIVE}).json
    clash = host.post({"type": EXCLUSIVE})
    assert clash.status_code == 409 and clash.json["error"]["job_id"] == active["id"]


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/jobs"), ("GET", "/jobs"), ("GET", "/jobs/{id}"), ("POST", "/jobs/{id}/cancel"),
    ("GET", "/jobs/stream-url"), ("GET", "/jobs/{id}/stream-url"), ("GET", "/jobs?limit=0"),
    ("GET", "/jobs/not-a-uuid"),
])
@pytest.mark.parametrize("body", [b'{"type": "noop"}', b"{not json"])
def test_nobody_signed_in_is_a_401_and_changes_nothing(host: Host, method: str, path: str,
                                                       body: bytes) -> None:
    job = host.post({"type": "noop"}).json
    before = jobs_table(host.url)
    host.sign_in(None)
    r = host.client.open(path.format(id=job["id"]), method=method, data=body,
                         content_type="application/json")
    assert r.status_code == 401 and r.json["error"]["code"] == "unauthorized", r.json
    assert jobs_table(host.url) == before


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/jobs/{id}"), ("POST", "/jobs/{id}/cancel"), ("GET", "/jobs/{id}/stream-url"),
])
def test_another_users_job_is_a_404(host: Host, method: str, path: str) -> None:
    job = host.post({"type": "noop"}).json
    before = jobs_table(host.url)
    host.sign_in(host.bob)
    r = host.client.open(path.format(id=job["id"]), method=method)
    assert r.status_code == 404 and r.json["error"]["code"] == "not_found"
    assert host.client.get("/jobs").json == {"jobs": [], "next_cursor": None}
    assert jobs_table(host.url) == before


#: The API's table of bad requests, on the extension's routes: the same status and code.
EXT_CASES = [
    Case(c.id, c.method, c.path.replace("/api/jobs", "/jobs", 1), c.status, c.code, c.body,
         c.headers, c.auth)
    for c in CASES if c.path.startswith("/api/jobs")
] + [
    Case("deeper-route", "GET", "/jobs/{pending}/cancel/now", 404, "not_found"),
    Case("put-stream-url", "PUT", "/jobs/stream-url", 405, "method_not_allowed"),
    Case("unknown-user", "POST", "/jobs", 422, "invalid_input", b'{"type": "noop"}',
         auth=False),
]


@pytest.mark.parametrize("case", EXT_CASES, ids=[c.id for c in EXT_CASES])
def test_bad_input_gets_the_apis_answer_and_changes_nothing(host: Host, case: Case) -> None:
    existing = {"pending": host.post({"type": "noop"}).json["id"],
                "cancelled": host.post({"type": "noop"}).json["id"]}
    host.client.post(f"/jobs/{existing['cancelled']}/cancel")
    host.post({"type": EXCLUSIVE})
    if not case.auth:
        host.sign_in(host.bob + 100)  # signed in as a user the app's table does not have
    before = jobs_table(host.url)
    r = host.client.open(case.path.format(**existing), method=case.method, data=case.body,
                         headers=case.headers)
    assert r.status_code == case.status, r.get_data(as_text=True)[:300]
    assert r.mimetype == "application/json" and r.json["error"]["code"] == case.code
    if case.status == 405:
        assert case.method not in r.headers["Allow"]
    assert jobs_table(host.url) == before


def test_a_user_the_apps_table_lacks_is_a_422_naming_that_table(host: Host) -> None:
    host.sign_in(host.bob + 100)
    r = host.post({"type": "noop"})
    assert r.status_code == 422 and r.json["error"] == {
        "code": "invalid_input",
        "message": f'no such user: Key (user_id)=({host.bob + 100}) is not present in table '
                   '"users".'}


def test_the_hosts_own_routes_and_errors_stay_its_own(host: Host) -> None:
    r = host.client.get("/no-such-page")
    assert r.status_code == 404 and r.mimetype == "text/html"
    assert host.app.config.get("MAX_CONTENT_LENGTH") is None


# Host routes enqueue in their own transactions --------------------------------------------


def test_a_host_route_enqueues_in_its_own_transaction(host: Host) -> None:
    r = host.client.post("/reports")
    assert r.status_code == 202
    assert stored(host.url, r.json["job_id"]) == (host.ada, {"echo": "report"})
    with host.client.session_transaction() as s:
        s["fail_after_enqueue"] = True
    host.app.testing = False
    assert host.client.post("/reports").status_code == 500
    assert len(jobs_table(host.url)) == 1  # rolled back with the host's work


# Stream URLs ---------------------------------------------------------------------------------


def token_of(url: str) -> stream_tokens.Grant:
    return stream_tokens.verify(SECRET, parse_qs(urlsplit(url).query)["token"][0])


def test_stream_urls_point_at_the_events_service_with_a_token_for_this_user(
        host: Host) -> None:
    job = host.post({"type": "noop"}).json
    with host.app.test_request_context("/"):
        session["user_id"] = host.ada
        one, mine = host.ext.stream_url(job["id"]), host.ext.stream_url()
    assert one.startswith(f"http://events.test:9001/events/jobs/{job['id']}?token=")
    assert mine.startswith("http://events.test:9001/events/jobs?token=")
    assert token_of(one).user_id == host.ada and token_of(one).job_id == uuid.UUID(job["id"])
    assert token_of(mine).job_id is None

    renewed = host.client.get(f"/jobs/{job['id']}/stream-url").json
    assert token_of(renewed["url"]).job_id == uuid.UUID(job["id"])
    assert renewed["expires_at"].startswith("20")
    assert token_of(host.client.get("/jobs/stream-url").json["url"]).user_id == host.ada


@pytest.mark.parametrize(("events_url", "request_host", "expected"), [
    (None, "app.example:5000", "http://app.example:8001/events/jobs?"),  # the events port
    ("/", "app.example:5000", "http://app.example:5000/events/jobs?"),  # behind one proxy
    ("https://live.example/", "app.example", "https://live.example/events/jobs?"),
])
def test_where_stream_urls_point(host_db_url: str, events_url: str | None, request_host: str,
                                 expected: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BGJOBS_EVENTS_URL", raising=False)
    monkeypatch.setenv("BGJOBS_EVENTS_BIND", "127.0.0.1:8001")
    app, ext = make_app(host_db_url, events_url, BGJOBS_STREAM_TOKEN_SECONDS=5)
    with app.test_request_context("/", base_url=f"http://{request_host}"):
        session["user_id"] = 1
        url = ext.stream_url()
    assert url.startswith(expected), url
    assert token_of(url).expires_at <= time.time() + 5


# Misuse fails fast -----------------------------------------------------------------------------


def test_misuse_fails_fast(host_db_url: str) -> None:
    with pytest.raises(TypeError, match="current_user_id"):
        BgJobs(Flask("x"))  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="needs current_user_id"):
        BgJobs(Flask("x"), current_user_id=None)  # type: ignore[arg-type]
    for prefix in ("jobs", "/jobs/", "/"):
        with pytest.raises(ValueError, match="url_prefix"):
            BgJobs(current_user_id=lambda: 1, url_prefix=prefix)
    app, ext = make_app(host_db_url)
    with pytest.raises(RuntimeError, match="already set up"):
        ext.init_app(app)
    for key, value in [("BGJOBS_STREAM_TOKEN_SECONDS", 0), ("BGJOBS_STREAM_TOKEN_SECONDS", "60"),
                       ("BGJOBS_DATABASE_URL", ""), ("BGJOBS_SECRET_KEY", 42),
                       ("BGJOBS_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1/x"),
                       ("BGJOBS_DATABASE_URL", "notaurl")]:
        bad = Flask("bad")
        bad.config[key] = value
        with pytest.raises(ConfigError, match=key):
            BgJobs(bad, current_user_id=lambda: 1)
        assert "bgjobs" not in bad.extensions and not bad.blueprints


def test_init_app_refuses_task_modules_it_cannot_import(host_db_url: str, monkeypatch) -> None:
    monkeypatch.setenv("BGJOBS_TASK_MODULES", "no_such_host_module")
    app = Flask("bad")
    app.config["BGJOBS_DATABASE_URL"] = host_db_url
    with pytest.raises(ConfigError, match="BGJOBS_TASK_MODULES: cannot import"):
        BgJobs(app, current_user_id=lambda: 1)
    assert "bgjobs" not in app.extensions


def test_a_current_user_id_that_is_no_int_is_a_logged_500(host: Host, caplog) -> None:
    host.app.extensions["bgjobs"]  # set up
    host.ext.current_user_id = lambda: "3"  # e.g. Flask-Login's get_id()
    with caplog.at_level(logging.ERROR):
        r = host.client.get("/jobs")
    assert r.status_code == 500 and r.json["error"]["code"] == "internal_error"
    assert "current_user_id returned '3'" in caplog.text


def test_two_apps_in_one_process_keep_their_own_databases(host: Host, db_url: str,
                                                         store) -> None:
    standalone_user, _ = store.create_user("solo")
    other, other_ext = make_app(db_url)
    with other.test_client() as client:
        with client.session_transaction() as s:
            s["user_id"] = standalone_user.id
        theirs = client.post("/jobs", json={"type": "noop"},
                             headers={"Origin": "http://localhost"}).json
        assert client.get("/jobs").json["jobs"] == [theirs]
    ours = host.post({"type": "noop"}).json
    assert [j["id"] for j in host.client.get("/jobs").json["jobs"]] == [ours["id"]]
    assert host.client.get(f"/jobs/{theirs['id']}").status_code == 404
    other_ext.close(other)


@pytest.mark.parametrize("headers", [
    {"Origin": "http://localhost:9999"},  # another port of the same host: the same site
    {"Origin": "https://evil.example"},
    {"Origin": "null"},
    {"Referer": "http://evil.example/page"},
    {},  # neither header
])
def test_a_change_from_another_origin_with_the_apps_cookie_is_refused(host: Host, headers):
    job = host.post({"type": "noop", "run_after": "2099-01-01T00:00:00Z"}).json
    host.client.environ_base.pop("HTTP_ORIGIN")
    for method, path, body in [("POST", "/jobs", {"type": "noop"}),
                               ("POST", f"/jobs/{job['id']}/cancel", None)]:
        r = host.client.open(path, method=method, json=body, headers=headers)
        assert r.status_code == 403 and r.json["error"]["code"] == "forbidden", r.json
    assert [j["status"] for j in host.client.get("/jobs").json["jobs"]] == ["pending"]
    ok = host.client.post(f"/jobs/{job['id']}/cancel",
                          headers={"Referer": "http://localhost/reports"})
    assert ok.status_code == 200 and ok.json["status"] == "cancelled"
