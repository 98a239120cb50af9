"""The events service (a real `bgjobs events`) and the signed stream tokens of the Flask
extension, in an app's database: the host's users stream their jobs with no bgjobs user."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import bgjobs
from bgjobs.core.store import Store
from bgjobs.server import stream_tokens
from tests.conftest import add_host_user, add_job
from tests.e2e.test_events_service import SECRET, EventsService, Reader, claim, start_events

HOST_ORIGIN = "http://127.0.0.1:5055"


@pytest.fixture
def events(host_db_url: str, tmp_path: Path) -> Iterator[EventsService]:
    service = start_events(host_db_url, tmp_path / "events.log",
                           BGJOBS_CORS_ORIGINS=HOST_ORIGIN)
    yield service
    assert service.proc.stop() == 0, service.proc.output()[-3000:]


def token(user_id: int, job_id: uuid.UUID | None = None, seconds: int = 60,
          now: float | None = None) -> str:
    return stream_tokens.issue(SECRET, user_id, job_id, seconds, now=now)[0]


def status(url: str, **headers: str) -> httpx.Response:
    """The answer's status and headers, without reading a stream to its end."""
    with httpx.stream("GET", url, headers=headers, timeout=10) as response:
        if response.status_code != 200:
            response.read()
        return response


def test_a_job_token_streams_that_job_to_its_user_and_reconnects_until_the_end(
        events: EventsService, host_db_url: str, host_store: Store) -> None:
    ada = add_host_user(host_db_url, "ada@example.com")
    job = add_job(host_store, "noop", user_id=ada)
    url = f"{events.base}/events/jobs/{job.id}?token={token(ada, job.id)}"
    reader = Reader(url, {"Origin": HOST_ORIGIN})
    assert reader.wait_events(1)[0]["data"]["id"] == str(job.id) and reader.status == 200
    attempt = claim(host_store, job.id)
    host_store.complete([(attempt, {"ok": True}, None)])
    final = reader.join()[-1]
    assert final["data"]["status"] == "complete"
    # EventSource reconnects to the same URL with the last id: the token still opens it.
    assert status(url, **{"Last-Event-ID": final["id"]}).status_code == 204
    assert events.stats()["subscriptions"] == 0


def test_a_user_token_streams_every_job_of_that_user_and_no_other(
        events: EventsService, host_db_url: str, host_store: Store) -> None:
    ada = add_host_user(host_db_url, "ada@example.com")
    bob = add_host_user(host_db_url, "bob@example.com")
    reader = Reader(f"{events.base}/events/jobs?token={token(ada)}", {})
    events.wait_stats(lambda s: s["subscriptions"] == 1, "subscribed")
    add_job(host_store, "noop", user_id=bob)
    mine = add_job(host_store, "noop", user_id=ada)
    assert reader.wait_for(lambda j: j["id"] == str(mine.id), "ada's job")
    reader.close()
    assert {e["data"]["user_id"] for e in reader.events} == {ada}
    # A user-wide token opens each of the user's jobs too.
    with httpx.stream("GET", f"{events.base}/events/jobs/{mine.id}?token={token(ada)}",
                      timeout=10) as response:
        assert response.status_code == 200


def test_expired_tampered_wrong_scope_and_wrong_user_tokens_are_refused(
        events: EventsService, host_db_url: str, host_store: Store) -> None:
    ada = add_host_user(host_db_url, "ada@example.com")
    bob = add_host_user(host_db_url, "bob@example.com")
    job = add_job(host_store, "noop", user_id=ada)
    other = add_job(host_store, "noop", user_id=ada)
    good = token(ada, job.id)
    one, mine = f"{events.base}/events/jobs/{job.id}", f"{events.base}/events/jobs"
    cases = [
        (one, token(ada, job.id, seconds=60, now=time.time() - 120), 401, "unauthorized"),
        (one, good[:-3] + ("xyz" if not good.endswith("xyz") else "abc"), 401, "unauthorized"),
        (one, token(ada, job.id).replace(".", "x.", 1), 401, "unauthorized"),
        (one, stream_tokens.issue("another key", ada, job.id, 60)[0], 401, "unauthorized"),
        (one, "", 401, "unauthorized"),
        (f"{events.base}/events/jobs/{other.id}", good, 403, "forbidden"),  # another job
        (mine, good, 403, "forbidden"),  # a job's token on the user's stream
        (one, token(bob, job.id), 404, "not_found"),  # made for bob, for ada's job
        (one, token(bob), 404, "not_found"),
        (f"{events.base}/events/jobs/not-a-uuid", token(ada), 404, "not_found"),
    ]
    for url, bad, code, error in cases:
        response = status(f"{url}?token={bad}")
        assert response.status_code == code, (url, bad, response.text)
        assert response.json()["error"]["code"] == error
    # A token is judged alone, as a bearer token is: a good bgjobs credential does not rescue
    # a bad one.
    _, bearer = host_store.create_user("ada", user_id=ada)
    response = status(f"{one}?token=garbage", Authorization=f"Bearer {bearer}")
    assert response.status_code == 401
    assert events.stats()["subscriptions"] == 0
    # The page only sees a 401; the service's log says why, for whoever runs it.
    output = events.proc.output()
    for why in ("stream token refused: its signature does not match this service's "
                "BGJOBS_SECRET_KEY", "the app and the events service must share it",
                f"stream token of user {ada} refused: it expired",
                "stream token refused: malformed"):
        assert why in output, output[-3000:]


def test_cors_lets_the_host_apps_origin_read_the_stream(events: EventsService,
                                                        host_db_url: str,
                                                        host_store: Store) -> None:
    ada = add_host_user(host_db_url, "ada@example.com")
    job = add_job(host_store, "noop", user_id=ada)
    url = f"{events.base}/events/jobs/{job.id}?token={token(ada, job.id)}"
    allowed = status(url, Origin=HOST_ORIGIN)
    assert allowed.headers["access-control-allow-origin"] == HOST_ORIGIN
    other = status(url, Origin="http://evil.example")
    assert "access-control-allow-origin" not in other.headers


def test_a_user_token_opens_that_users_workflows_and_a_job_token_does_not(
        events: EventsService, host_db_url: str, host_store: Store) -> None:
    ada = add_host_user(host_db_url, "ada@example.com")
    bob = add_host_user(host_db_url, "bob@example.com")
    with bgjobs.workflow(user_id=ada, store=host_store) as wf:
        first = wf.enqueue("noop")
    base = f"{events.base}/events/workflows/{wf.id}"
    reader = Reader(f"{base}?token={token(ada)}", {"Origin": HOST_ORIGIN})
    assert reader.wait_for(lambda d: "total" in d, "the summary")["data"]["total"] == 1
    reader.close()
    assert status(f"{base}?token={token(ada, first.id)}").status_code == 403
    assert status(f"{base}?token={token(bob)}").status_code == 404
