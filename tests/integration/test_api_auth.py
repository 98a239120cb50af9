"""Who may call what: bearer tokens, session cookies, and scoping to the caller's own jobs."""

from __future__ import annotations

import pytest

from bgjobs.server import auth
from tests.api_task_fixtures import Api, api_fixture, snapshot  # noqa: F401

# What a browser sends with every state-changing request from the dashboard (the test
# client's host is localhost); see test_api_hardening.py for requests without it.
SAME_ORIGIN = {"Origin": "http://localhost"}


def _new_job(api: Api) -> dict:
    r = api.client.post("/api/jobs", json={"type": "noop"}, headers=api.alice.headers)
    assert r.status_code == 202
    return r.json


def _assert_401(response) -> None:
    assert response.status_code == 401, response.get_data(as_text=True)
    assert response.json["error"]["code"] == "unauthorized"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


PROTECTED = [
    ("GET", "/api/jobs"), ("POST", "/api/jobs"), ("GET", "/api/me"), ("GET", "/api/types"),
    ("GET", "/api/jobs/{id}"), ("POST", "/api/jobs/{id}/cancel"),
]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
@pytest.mark.parametrize("credentials", [
    {},
    {"Authorization": "Bearer bgj_not-a-real-token"},
    {"Authorization": "Basic YWxpY2U6c2VjcmV0"},
    {"Authorization": "Bearer"},
], ids=["none", "wrong-token", "not-bearer", "empty-bearer"])
def test_missing_or_bad_credentials_get_401(api: Api, db_url: str, method: str, path: str,
                                            credentials: dict) -> None:
    job = _new_job(api)
    before = snapshot(db_url)
    r = api.client.open(path.format(id=job["id"]), method=method, headers=credentials,
                        json={"type": "noop"} if method == "POST" else None)
    _assert_401(r)
    assert snapshot(db_url) == before


def test_another_users_job_is_404_like_a_missing_one(api: Api, db_url: str) -> None:
    job = _new_job(api)
    missing = "00000000-0000-4000-8000-000000000000"
    before = snapshot(db_url)
    for job_id in (job["id"], missing):
        got = api.client.get(f"/api/jobs/{job_id}", headers=api.bob.headers)
        cancel = api.client.post(f"/api/jobs/{job_id}/cancel", headers=api.bob.headers)
        for r in (got, cancel):
            assert r.status_code == 404 and r.json["error"] == {
                "code": "not_found", "message": f"no job {job_id}"}
    assert api.client.get("/api/jobs", headers=api.bob.headers).json["jobs"] == []
    assert snapshot(db_url) == before  # bob's cancel changed nothing


def test_revoked_token_is_401(api: Api, store) -> None:
    job = _new_job(api)
    assert store.revoke_tokens("alice") == 1
    _assert_401(api.client.get(f"/api/jobs/{job['id']}", headers=api.alice.headers))
    # A new token for the same user sees the same jobs.
    _, token = store.create_token("alice")
    r = api.client.get(f"/api/jobs/{job['id']}", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200


def _session_cookie(api: Api):
    return api.client.get_cookie(auth.SESSION_COOKIE)


def test_session_sign_in_and_out(api: Api) -> None:
    job = _new_job(api)
    r = api.client.post("/api/session", json={"token": api.alice.token})
    assert r.status_code == 200
    assert r.json == {"user": {"id": api.alice.id, "name": "alice", "is_admin": False}}
    set_cookie = r.headers["Set-Cookie"]
    assert set_cookie.startswith(f"{auth.SESSION_COOKIE}=")
    for attribute in ("HttpOnly", "SameSite=Lax", "Path=/"):
        assert attribute in set_cookie
    assert "Secure" not in set_cookie
    assert api.alice.token not in set_cookie  # the cookie is signed, not the token itself

    # The cookie alone is enough for every endpoint.
    assert api.client.get("/api/me").json["user"]["name"] == "alice"
    assert api.client.get(f"/api/jobs/{job['id']}").status_code == 200
    created = api.client.post("/api/jobs", json={"type": "noop"}, headers=SAME_ORIGIN)
    assert created.status_code == 202 and created.json["user_id"] == api.alice.id

    out = api.client.delete("/api/session", headers=SAME_ORIGIN)
    assert out.status_code == 204 and _session_cookie(api) is None
    _assert_401(api.client.get("/api/me"))


def test_sign_out_ends_the_session_on_the_server(api: Api) -> None:
    api.client.post("/api/session", json={"token": api.alice.token})
    copied = _session_cookie(api).value  # a copy kept elsewhere (another tab, a thief)
    api.client.post("/api/session", json={"token": api.alice.token}, headers=SAME_ORIGIN)
    other = _session_cookie(api).value  # a second sign-in: its own session
    assert other != copied
    api.client.set_cookie(auth.SESSION_COOKIE, copied)
    assert api.client.delete("/api/session", headers=SAME_ORIGIN).status_code == 204
    api.client.set_cookie(auth.SESSION_COOKIE, copied)
    _assert_401(api.client.get("/api/me"))
    api.client.set_cookie(auth.SESSION_COOKIE, other)
    assert api.client.get("/api/me").json["user"]["name"] == "alice"
    # Signing out twice, or without a session, is no error.
    api.client.set_cookie(auth.SESSION_COOKIE, copied)
    assert api.client.delete("/api/session", headers=SAME_ORIGIN).status_code == 204
    api.client.delete_cookie(auth.SESSION_COOKIE)
    assert api.client.delete("/api/session").status_code == 204


def test_a_bearer_token_wins_over_the_cookie(api: Api) -> None:
    api.client.post("/api/session", json={"token": api.alice.token})
    assert api.client.get("/api/me", headers=api.bob.headers).json["user"]["name"] == "bob"
    # A bad token is not rescued by a good cookie: the client asked to be that token.
    _assert_401(api.client.get("/api/me", headers={"Authorization": "Bearer nope"}))


def test_session_made_by_the_helper_is_accepted(api: Api) -> None:
    """The events service reads the same cookie, made by server.auth: the formats agree."""
    r = api.client.post("/api/session", json={"token": api.alice.token})
    value = _session_cookie(api).value
    assert auth.read_session("api-test-secret", value) is not None
    assert r.status_code == 200


def test_session_ends_when_its_token_is_revoked(api: Api, store) -> None:
    api.client.post("/api/session", json={"token": api.alice.token})
    assert api.client.get("/api/me").status_code == 200
    store.revoke_tokens("alice")
    _assert_401(api.client.get("/api/me"))


def test_forged_or_foreign_cookies_are_401(api: Api) -> None:
    api.client.set_cookie(auth.SESSION_COOKIE, "forged.value.here")
    _assert_401(api.client.get("/api/me"))
    api.client.set_cookie(auth.SESSION_COOKIE, "x" * 50)
    _assert_401(api.client.get("/api/jobs"))


@pytest.mark.parametrize(("body", "status"), [
    ({"token": "bgj_wrong"}, 401),
    ({"token": ""}, 422),
    ({"token": 42}, 422),
    ({}, 422),
])
def test_bad_sign_in_sets_no_cookie(api: Api, body: dict, status: int) -> None:
    r = api.client.post("/api/session", json=body)
    assert r.status_code == status and "Set-Cookie" not in r.headers
    assert r.json["error"]["message"]


def test_secure_cookie_when_configured(api: Api, store, monkeypatch) -> None:
    from bgjobs.server.api import create_app

    monkeypatch.setenv("BGJOBS_COOKIE_SECURE", "1")
    client = create_app(store=store).test_client()
    r = client.post("/api/session", json={"token": api.alice.token})
    assert r.status_code == 200 and "Secure" in r.headers["Set-Cookie"]
