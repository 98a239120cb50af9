"""examples/seed_app's own routes in-process (Flask's test client), each failure path: a clear
4xx JSON answer and nothing stored. The whole app under gunicorn: tests/e2e/test_seed_app.py."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
from flask.testing import FlaskClient

from bgjobs.core.pool_holder import PoolHolder
from bgjobs.tasks import enqueue as enqueue_mod
from tests.conftest import migrated_database
from tests.seed_app_client import EXAMPLE, add_user


@dataclass
class Seed:
    client: FlaskClient
    url: str
    ada: int
    bob: int

    def sign_in(self, email: str, password: str) -> int:
        return self.client.post("/login", data={"email": email, "password": password}
                                ).status_code

    def stored(self) -> list[tuple]:
        with psycopg.connect(self.url) as conn:
            return [*conn.execute("SELECT id, status FROM background_jobs ORDER BY id"),
                    *conn.execute("SELECT action, job_id FROM activity ORDER BY id")]


@pytest.fixture(scope="module")
def seed_db(server_url: str) -> Iterator[str]:
    with migrated_database(server_url, (EXAMPLE / "schema.sql").read_text()) as url:
        yield url


@pytest.fixture
def seed(seed_db: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Seed]:
    with psycopg.connect(seed_db, autocommit=True) as conn:
        conn.execute("TRUNCATE background_jobs, activity, users RESTART IDENTITY CASCADE")
    monkeypatch.setenv("DATABASE_URL", seed_db)
    monkeypatch.setenv("SECRET_KEY", "seed-app-test")
    monkeypatch.setenv("BGJOBS_SECRET_KEY", "seed-app-stream")
    monkeypatch.syspath_prepend(str(EXAMPLE))
    # bgjobs.get_job: this database
    monkeypatch.setattr(enqueue_mod, "_default", PoolHolder(enqueue_mod._opener()))
    from backend import app as app_module
    from backend import database

    app = app_module.create_app()
    ada, bob = add_user(seed_db, "ada@example.com", "ada-pw"), add_user(seed_db, "bob@x.org", "b")
    try:
        with app.test_client() as client:
            client.environ_base["HTTP_ORIGIN"] = "http://localhost"  # a browser on its page
            yield Seed(client, seed_db, ada, bob)
    finally:
        app_module.jobs.close(app)
        database.close()
        enqueue_mod.default_store().pool.close()


def test_start_progress_cancel(seed: Seed) -> None:
    assert seed.sign_in("ada@example.com", "ada-pw") == 302
    started = seed.client.post("/api/validation/run", json={"tickers": 5, "years": 1})
    assert started.status_code == 202, started.json
    job_id = started.json["job_id"]
    assert started.json["stream_url"].endswith(
        f"/events/jobs/{job_id}?token={started.json['stream_url'].rpartition('=')[2]}")
    progress = seed.client.get(f"/api/validation/progress/{job_id}").json
    assert progress["status"] == "pending" and progress["version"] >= 1
    cancelled = seed.client.post(f"/api/validation/cancel/{job_id}")
    assert cancelled.status_code == 200 and cancelled.json["status"] == "cancelled"
    assert [row[0] for row in seed.stored()[1:]] == ["start validation", "cancel validation"]


@pytest.mark.parametrize(("method", "path", "body", "status"), [
    ("POST", "/api/screening/run", {"stocks": "many"}, 422),  # the task's params check
    ("POST", "/api/screening/run", {"nope": 1}, 422),
    ("POST", "/api/screening/run", [1, 2], 400),
    ("POST", "/api/screening/run", "{oops", 400),
    ("POST", "/api/screening/run", {}, 409),  # one is active already
    ("POST", "/api/backtest/run", {}, 404),  # no such feature
    ("GET", "/api/screening/run", None, 405),
    ("GET", "/api/screening/progress/not-a-uuid", None, 404),
    ("GET", "/api/rescoring/progress/{active}", None, 404),  # another feature's job
    ("GET", "/api/screening/progress/{other}", None, 404),  # another user's job
    ("POST", "/api/screening/cancel/{other}", None, 404),
    ("POST", "/api/screening/cancel/{missing}", None, 404),
    ("POST", "/api/optimization/cancel/{finished}", None, 409),
])
def test_bad_requests_get_a_json_error_and_change_nothing(seed: Seed, method: str, path: str,
                                                          body: object, status: int) -> None:
    assert seed.sign_in("bob@x.org", "b") == 302
    other = seed.client.post("/api/screening/run", json={}).json["job_id"]
    assert seed.sign_in("ada@example.com", "ada-pw") == 302
    finished = seed.client.post("/api/optimization/run", json={}).json["job_id"]
    seed.client.post(f"/api/optimization/cancel/{finished}")
    active = seed.client.post("/api/screening/run", json={}).json["job_id"]
    before = seed.stored()
    data = body if isinstance(body, str) else None
    answer = seed.client.open(
        path.format(active=active, other=other, finished=finished, missing=uuid.uuid4()),
        method=method, json=None if data is not None else body, data=data,
        content_type="application/json")
    assert answer.status_code == status, answer.get_data(as_text=True)[:300]
    assert answer.mimetype == "application/json" and answer.json["error"]
    if status == 409:
        assert answer.json["job_id"] in (active, finished)
    assert seed.stored() == before


def test_signed_out_api_calls_are_401_and_pages_go_to_the_sign_in(seed: Seed) -> None:
    assert seed.sign_in("ada@example.com", "wrong") == 401
    assert seed.client.post("/api/validation/run", json={}).status_code == 401
    assert seed.client.get(f"/api/validation/progress/{uuid.uuid4()}").status_code == 401
    assert seed.client.get("/jobs").status_code == 401
    page = seed.client.get("/")
    assert page.status_code == 302 and page.headers["Location"].endswith("/login")
    assert seed.stored() == []


# The check is the extension's (every case of it: test_flask_ext.py); here, that both routes
# take it.
@pytest.mark.parametrize("headers", [
    {"Origin": "http://localhost:9999"},  # another port of the same host: the same site
    {"Referer": "http://evil.example/page"},
    {},  # neither header
])
def test_a_change_from_another_origin_is_refused_and_changes_nothing(seed: Seed,
                                                                     headers: dict) -> None:
    assert seed.sign_in("ada@example.com", "ada-pw") == 302
    job_id = seed.client.post("/api/rescoring/run", json={}).json["job_id"]
    before = seed.stored()
    seed.client.environ_base.pop("HTTP_ORIGIN")
    for path in ("/api/validation/run", f"/api/rescoring/cancel/{job_id}"):
        answer = seed.client.post(path, json={}, headers=headers)
        assert answer.status_code == 403, answer.get_data(as_text=True)[:300]
        assert answer.mimetype == "application/json"
        assert "Origin" in answer.json["error"] or "cross-site" in answer.json["error"]
    assert seed.stored() == before
    ok = seed.client.post(f"/api/rescoring/cancel/{job_id}",
                          headers={"Referer": "http://localhost/"})
    assert ok.status_code == 200 and ok.json["status"] == "cancelled"


@pytest.mark.parametrize(("data", "content_type"), [
    ("x=1", "application/x-www-form-urlencoded"),  # what another site's form sends
    ("{}", "text/plain"),
    ("", None),
])
def test_a_start_that_is_not_json_is_a_415_and_changes_nothing(seed: Seed, data: str,
                                                               content_type: str | None) -> None:
    assert seed.sign_in("ada@example.com", "ada-pw") == 302
    answer = seed.client.post("/api/rescoring/run", data=data, content_type=content_type)
    assert answer.status_code == 415, answer.get_data(as_text=True)[:300]
    assert "application/json" in answer.json["error"]
    assert seed.stored() == []


def test_the_session_cookie_is_samesite_lax(seed: Seed) -> None:
    answer = seed.client.post("/login", data={"email": "ada@example.com", "password": "ada-pw"})
    assert "SameSite=Lax" in answer.headers["Set-Cookie"]
