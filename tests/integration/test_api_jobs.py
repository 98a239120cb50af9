"""The job endpoints through Flask's test client, on a real Postgres."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest

from tests.api_task_fixtures import (  # noqa: F401
    EXCLUSIVE,
    METRICS_AUTH,
    Api,
    api_fixture,
    snapshot,
)


def _post(api: Api, body: dict, user=None, **headers):
    user = user or api.alice
    return api.client.post("/api/jobs", json=body, headers={**user.headers, **headers})


def test_create_get_and_cancel(api: Api) -> None:
    r = _post(api, {"type": "noop", "params": {"echo": [1, "two"]}, "priority": -5})
    assert r.status_code == 202, r.json
    job = r.json
    assert job["type"] == "noop" and job["status"] == "pending" and job["priority"] == -5
    assert job["params"] == {"echo": [1, "two"]} and job["user_id"] == api.alice.id
    assert r.headers["Location"] == f"/api/jobs/{job['id']}"
    assert "Idempotent-Replayed" not in r.headers

    got = api.client.get(f"/api/jobs/{job['id']}", headers=api.alice.headers)
    assert got.status_code == 200 and got.json == job

    cancelled = api.client.post(f"/api/jobs/{job['id']}/cancel", headers=api.alice.headers)
    assert cancelled.status_code == 200
    assert cancelled.json["status"] == "cancelled" and cancelled.json["finished_at"]
    again = api.client.post(f"/api/jobs/{job['id']}/cancel", headers=api.alice.headers)
    assert again.status_code == 409
    assert again.json["error"]["code"] == "conflict" and again.json["error"]["job_id"] == job["id"]


def test_defaults_and_run_after(api: Api) -> None:
    when = datetime.now(UTC) + timedelta(hours=1)
    r = _post(api, {"type": "noop", "run_after": when.isoformat().replace("+00:00", "Z")})
    assert r.status_code == 202, r.json
    assert datetime.fromisoformat(r.json["run_after"]) == when
    assert r.json["params"] == {"echo": None} and r.json["priority"] == 0
    assert r.json["max_attempts"] == 3


def test_list_newest_first_with_filters_and_cursor(api: Api, store) -> None:
    ids = [_post(api, {"type": "noop", "params": {"echo": i}}).json["id"] for i in range(7)]
    _post(api, {"type": "noop"}, user=api.bob)  # never in alice's lists
    api.client.post(f"/api/jobs/{ids[2]}/cancel", headers=api.alice.headers)

    seen, cursor, pages = [], None, 0
    while True:
        query = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        r = api.client.get("/api/jobs", query_string=query, headers=api.alice.headers)
        assert r.status_code == 200, r.json
        seen += [j["id"] for j in r.json["jobs"]]
        pages += 1
        cursor = r.json["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1] and pages == 3

    r = api.client.get("/api/jobs?status=cancelled", headers=api.alice.headers)
    assert [j["id"] for j in r.json["jobs"]] == [ids[2]] and r.json["next_cursor"] is None
    r = api.client.get(f"/api/jobs?type={EXCLUSIVE}", headers=api.alice.headers)
    assert r.json == {"jobs": [], "next_cursor": None}
    r = api.client.get("/api/jobs?type=noop&status=pending&limit=200",
                       headers=api.alice.headers)
    assert len(r.json["jobs"]) == 6


def test_cursor_order_is_stable_for_equal_timestamps(api: Api, conn) -> None:
    """Jobs created in one transaction share created_at; the id breaks the tie."""
    conn.execute("INSERT INTO background_jobs (job_type, user_id) "
                 "SELECT 'noop', %s FROM generate_series(1, 5)", (api.alice.id,))
    first = api.client.get("/api/jobs?limit=2", headers=api.alice.headers).json
    rest = api.client.get("/api/jobs", query_string={"cursor": first["next_cursor"]},
                          headers=api.alice.headers).json
    ids = [j["id"] for j in first["jobs"] + rest["jobs"]]
    assert len(set(ids)) == 5 and ids == sorted(ids, reverse=True)


def test_idempotency_key_replay_returns_the_same_job(api: Api, db_url: str) -> None:
    body = {"type": "noop", "params": {"echo": "once"}}
    first = _post(api, body, **{"Idempotency-Key": "order-42"})
    assert first.status_code == 202
    before = snapshot(db_url)
    replay = _post(api, body, **{"Idempotency-Key": "order-42"})
    assert replay.status_code == 202 and replay.json == first.json
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert snapshot(db_url) == before

    # The same key for a different request is refused, naming the earlier job.
    other = _post(api, {"type": "noop", "params": {"echo": "twice"}},
                  **{"Idempotency-Key": "order-42"})
    assert other.status_code == 409 and other.json["error"]["job_id"] == first.json["id"]
    # Keys are per user: bob's order-42 is his own job.
    bobs = _post(api, body, user=api.bob, **{"Idempotency-Key": "order-42"})
    assert bobs.status_code == 202 and bobs.json["id"] != first.json["id"]
    assert len(snapshot(db_url)["background_jobs"]) == 2


def test_exclusive_type_allows_one_active_job_per_user(api: Api) -> None:
    first = _post(api, {"type": EXCLUSIVE})
    assert first.status_code == 202
    second = _post(api, {"type": EXCLUSIVE, "params": {"n": 2}})
    assert second.status_code == 409
    assert second.json["error"]["job_id"] == first.json["id"]
    assert EXCLUSIVE in second.json["error"]["message"]
    # Another user has a slot of their own.
    assert _post(api, {"type": EXCLUSIVE}, user=api.bob).status_code == 202
    # Once the first one has finished, a new one may start.
    api.client.post(f"/api/jobs/{first.json['id']}/cancel", headers=api.alice.headers)
    assert _post(api, {"type": EXCLUSIVE}).status_code == 202


def test_exclusive_replay_with_idempotency_key_is_not_a_conflict(api: Api) -> None:
    first = _post(api, {"type": EXCLUSIVE}, **{"Idempotency-Key": "k1"})
    replay = _post(api, {"type": EXCLUSIVE}, **{"Idempotency-Key": "k1"})
    assert replay.status_code == 202 and replay.json["id"] == first.json["id"]


@pytest.mark.parametrize("round_", range(5))
def test_racing_posts_for_an_exclusive_type(api: Api, db_url: str, round_: int) -> None:
    """Two requests at the same instant: Postgres' unique index lets exactly one through."""
    barrier = threading.Barrier(2)

    def post(_: int):
        barrier.wait()
        return api.app.test_client().post("/api/jobs", json={"type": EXCLUSIVE},
                                          headers=api.alice.headers)

    with ThreadPoolExecutor(2) as pool:
        responses = list(pool.map(post, range(2)))
    codes = sorted(r.status_code for r in responses)
    assert codes == [202, 409], [r.json for r in responses]
    winner = next(r for r in responses if r.status_code == 202).json
    loser = next(r for r in responses if r.status_code == 409).json
    assert loser["error"]["job_id"] == winner["id"]
    assert [row[0] for row in snapshot(db_url)["background_jobs"]] == [
        uuid.UUID(winner["id"])]


def test_types_lists_registered_job_types(api: Api) -> None:
    r = api.client.get("/api/types", headers=api.alice.headers)
    assert r.status_code == 200
    by_name = {t["type"]: t for t in r.json["types"]}
    assert {"noop", "demo", EXCLUSIVE} <= set(by_name)
    assert by_name[EXCLUSIVE]["exclusive"] is True and "n" in by_name[EXCLUSIVE]["params"]


def test_healthz_and_metrics_read_postgres(api: Api) -> None:
    assert api.client.get("/healthz").json == {"status": "ok", "database": "ok"}
    a = _post(api, {"type": "noop"}).json
    _post(api, {"type": "noop"})
    api.client.post(f"/api/jobs/{a['id']}/cancel", headers=api.alice.headers)
    r = api.client.get("/metrics", headers=METRICS_AUTH)
    assert r.status_code == 200 and r.mimetype == "text/plain"
    text = r.get_data(as_text=True)
    assert 'bgjobs_jobs{type="noop",status="pending"} 1' in text
    assert 'bgjobs_jobs_finished{type="noop",status="cancelled"} 1' in text
    assert 'bgjobs_oldest_pending_job_age_seconds{type="noop"} ' in text
    assert 'bgjobs_jobs_finished_recently{type="noop",status="cancelled",window="300s"} 1' in text
    assert "bgjobs_database_up 1" in text


def test_openapi_describes_every_route(api: Api) -> None:
    spec = api.client.get("/api/openapi.json").json
    assert spec["openapi"].startswith("3.")
    documented = {(path, method) for path, ops in spec["paths"].items() for method in ops}
    for rule in api.app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.endpoint.startswith("dashboard."):
            continue  # the browser page and its assets, not API
        path = rule.rule.replace("<raw_id>", "{id}").replace("<name>", "{name}")
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert (path, method.lower()) in documented, (path, method)


def test_responses_name_the_worker_and_are_not_cached(api: Api) -> None:
    r = api.client.get("/api/me", headers=api.alice.headers)
    assert r.json == {"user": {"id": api.alice.id, "name": "alice", "is_admin": False}}
    assert r.headers["X-Served-By"].isdigit() and r.headers["Cache-Control"] == "no-store"
