"""bgjobs.asgi in a host Starlette app: its signed-in users' jobs, 401 and 404 as the Flask
extension answers them, and a live stream through the app's own origin to a job's end."""

from __future__ import annotations

import json
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.exceptions import StarletteDeprecationWarning
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

with warnings.catch_warnings():
    # Starlette asks for httpx2 beside the httpx bgjobs's tests already use; httpx still works.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

import bgjobs.aio
from bgjobs.asgi import BgJobs
from bgjobs.core.jobs import Attempt
from bgjobs.core.store import Store
from tests.conftest import doc_code, wait_for


def signed_in(request: Request) -> int | None:
    """The host's sign-in, reduced to a header (a real app reads its session)."""
    raw = request.headers.get("x-user")
    return int(raw) if raw else None


async def signed_in_async(request: Request) -> int | None:
    return signed_in(request)


async def home(request: Request) -> PlainTextResponse:
    return PlainTextResponse("the host's own page")


def host_app(jobs: BgJobs) -> Starlette:
    return Starlette(routes=[Route("/", home), *jobs.routes], lifespan=jobs.lifespan)


@pytest.fixture(params=[signed_in, signed_in_async], ids=["sync", "async"])
def client(request, db_url: str, monkeypatch) -> Iterator[tuple[TestClient, BgJobs]]:
    monkeypatch.setenv("DATABASE_URL", db_url)
    jobs = BgJobs(current_user_id=request.param)
    with TestClient(host_app(jobs)) as c:
        yield c, jobs
        c.portal.call(bgjobs.aio.close)


@pytest.fixture
def users(store: Store) -> tuple[dict[str, str], dict[str, str]]:
    alice, _ = store.create_user("alice")
    bob, _ = store.create_user("bob")
    return {"X-User": str(alice.id)}, {"X-User": str(bob.id)}


def test_a_signed_in_user_enqueues_and_reads_their_job_and_nobody_else_does(client, users):
    c, _ = client
    alice, bob = users
    assert c.get("/").text == "the host's own page"
    made = c.post("/jobs", json={"type": "noop", "params": {"echo": 1}}, headers=alice)
    assert made.status_code == 202, made.text
    job = made.json()
    assert made.headers["location"] == f"/jobs/{job['id']}"
    assert job["status"] == "pending" and job["params"] == {"echo": 1}
    assert c.get(f"/jobs/{job['id']}", headers=alice).json()["id"] == job["id"]
    assert [j["id"] for j in c.get("/jobs", headers=alice).json()["jobs"]] == [job["id"]]
    # Another user: a 404, as if there were no such job; and an empty list.
    for response in (c.get(f"/jobs/{job['id']}", headers=bob),
                     c.post(f"/jobs/{job['id']}/cancel", headers=bob),
                     c.get(f"/jobs/events/{job['id']}", headers=bob)):
        assert response.status_code == 404, response.text
        assert response.json()["error"]["code"] == "not_found"
    assert c.get("/jobs", headers=bob).json()["jobs"] == []
    cancelled = c.post(f"/jobs/{job['id']}/cancel", headers=alice)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert c.post(f"/jobs/{job['id']}/cancel", headers=alice).status_code == 409


def test_nobody_signed_in_is_a_401_everywhere(client, users):
    c, _ = client
    alice, _ = users
    job = c.post("/jobs", json={"type": "noop"}, headers=alice).json()
    for response in (c.post("/jobs", json={"type": "noop"}), c.get("/jobs"),
                     c.get(f"/jobs/{job['id']}"), c.post(f"/jobs/{job['id']}/cancel"),
                     c.get(f"/jobs/workflows/{job['id']}"),
                     c.get(f"/jobs/events/{job['id']}"), c.get("/jobs/events")):
        assert response.status_code == 401, response.text
        assert response.json()["error"]["code"] == "unauthorized"


@pytest.mark.parametrize(("body", "headers", "status", "code"), [
    ({"type": "nope"}, {}, 422, None),
    ({"type": "noop", "priority": 5000}, {}, 422, None),
    ({"type": "noop"}, {"Idempotency-Key": " x"}, 400, "bad_request"),
    ("not json", {"content-type": "application/json"}, 400, "malformed_json"),
    ("{}", {"content-type": "text/plain"}, 415, "unsupported_media_type"),
])
def test_bad_requests_get_the_apis_json_errors(client, users, body, headers, status, code):
    c, _ = client
    alice, _ = users
    if isinstance(body, dict):
        response = c.post("/jobs", json=body, headers={**alice, **headers})
    else:
        response = c.post("/jobs", content=body, headers={**alice, **headers})
    assert response.status_code == status, response.text
    if code:
        assert response.json()["error"]["code"] == code


def test_an_idempotency_key_replays_the_job(client, users):
    c, _ = client
    alice, _ = users
    first = c.post("/jobs", json={"type": "noop"}, headers={**alice, "Idempotency-Key": "k1"})
    again = c.post("/jobs", json={"type": "noop"}, headers={**alice, "Idempotency-Key": "k1"})
    assert again.status_code == 202 and again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]


def test_a_cross_site_post_with_the_apps_cookie_is_refused(client, users):
    c, _ = client
    alice, _ = users
    c.cookies.set("session", "the-apps")
    refused = c.post("/jobs", json={"type": "noop"},
                     headers={**alice, "Origin": "http://evil.example"})
    assert refused.status_code == 403
    same = c.post("/jobs", json={"type": "noop"},
                  headers={**alice, "Origin": "http://testserver"})
    assert same.status_code == 202


def events_of(text: str) -> list[dict[str, Any]]:
    return [json.loads(line[len("data: "):]) for line in text.splitlines()
            if line.startswith("data: ")]


def test_a_live_stream_through_the_app_follows_a_job_to_its_end(client, users, store: Store):
    c, jobs = client
    alice, _ = users
    job = c.post("/jobs", json={"type": "noop"}, headers=alice).json()
    out: dict[str, Any] = {}

    def stream() -> None:
        out["response"] = c.get(f"/jobs/events/{job['id']}", headers=alice)

    reader = threading.Thread(target=stream)
    reader.start()
    wait_for(lambda: jobs._events is not None and jobs._events.broadcaster.open_streams,
             message="the stream to subscribe")
    [spec] = store.claim_specs("w", ["noop"])
    attempt = Attempt(spec.id, "w", spec.attempt)
    heard = jobs._events.broadcaster.notifications
    store.report_progress([(attempt, {"current": 1, "total": 2})])
    wait_for(lambda: jobs._events.broadcaster.notifications > heard,
             message="the progress notification")
    store.complete([(attempt, {"ok": True}, {"current": 2, "total": 2})])
    reader.join(timeout=15)
    assert not reader.is_alive(), "the stream did not end with the job"
    response = out["response"]
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    states = events_of(response.text)
    assert states[0]["status"] == "pending"
    assert states[-1]["status"] == "complete" and states[-1]["result"] == {"ok": True}
    # pending, running (claimed), the progress reported, complete: each as it happened
    assert [(s["status"], s["progress"]) for s in states][-2:] == [
        ("running", {"current": 1, "total": 2}), ("complete", {"current": 2, "total": 2})]


def test_the_docs_fastapi_example_runs_as_written(db_url, monkeypatch, store: Store):
    monkeypatch.setenv("DATABASE_URL", db_url)
    alice, _ = store.create_user("alice")
    bob, _ = store.create_user("bob")
    doc: dict[str, Any] = {"__name__": "doc"}
    exec(doc_code("asgi.md", "## FastAPI", "python"), doc)
    with TestClient(doc["app"]) as c:
        assert c.post("/reports").status_code == 401
        assert c.post(f"/login/{alice.id}").status_code == 200
        report = c.post("/reports").json()
        mine = c.get(f"/jobs/{report['job']}")
        assert mine.status_code == 200 and mine.json()["user_id"] == alice.id
        made = c.post("/jobs", json={"type": "noop"}, headers={"Origin": "http://testserver"})
        assert made.status_code == 202
        c.post(f"/login/{bob.id}")
        assert c.get(f"/jobs/{report['job']}").status_code == 404
        c.portal.call(bgjobs.aio.close)


def test_an_app_served_again_on_another_loop_streams_again(db_url, monkeypatch, store: Store):
    # No lifespan: the streams start with the first one, on that client's loop.
    monkeypatch.setenv("DATABASE_URL", db_url)
    alice, _ = store.create_user("alice")
    jobs = BgJobs(current_user_id=signed_in)
    app = Starlette(routes=jobs.routes)
    for n in range(2):
        with TestClient(app) as c:
            job = c.post("/jobs", json={"type": "noop"}, headers={"X-User": str(alice.id)}).json()
            c.post(f"/jobs/{job['id']}/cancel", headers={"X-User": str(alice.id)})
            ended = c.get(f"/jobs/events/{job['id']}", headers={"X-User": str(alice.id)})
            assert events_of(ended.text)[-1]["status"] == "cancelled"
            if n:  # the first loop ends with its streams' tasks still there
                c.portal.call(jobs.close)
            c.portal.call(bgjobs.aio.close)
