"""Hostile requests the API refuses: cross-site posts riding the session cookie, scrapes of the
metrics without their token; and the headers that keep the dashboard out of other pages."""

from __future__ import annotations

import pytest

from bgjobs.server import auth
from tests.api_task_fixtures import METRICS_AUTH, Api, api_fixture, snapshot  # noqa: F401

OWN = "http://localhost"  # the Flask test client's host
FOREIGN = ["http://localhost:9999", "http://evil.example", "https://localhost", "null"]


def _signed_in(api: Api) -> dict:
    """Sign alice in with the cookie; a job of hers, pending."""
    r = api.client.post("/api/session", json={"token": api.alice.token})
    assert r.status_code == 200 and api.client.get_cookie(auth.SESSION_COOKIE)
    r = api.client.post("/api/jobs", json={"type": "noop"}, headers={"Origin": OWN})
    assert r.status_code == 202, r.json
    return r.json


def _refused(response) -> None:
    assert response.status_code == 403, response.get_data(as_text=True)
    assert response.json["error"]["code"] == "forbidden"
    assert "cross-site" in response.json["error"]["message"] or "Origin" in \
        response.json["error"]["message"]


@pytest.mark.parametrize("header", ["Origin", "Referer"])
@pytest.mark.parametrize("foreign", FOREIGN)
def test_cookie_requests_from_another_origin_change_nothing(api: Api, header: str,
                                                            foreign: str) -> None:
    job = _signed_in(api)
    before = snapshot(api.url)
    value = foreign if header == "Origin" or foreign == "null" else f"{foreign}/attack.html"
    evil = {header: value}
    _refused(api.client.post("/api/jobs", json={"type": "noop"}, headers=evil))
    _refused(api.client.post(f"/api/jobs/{job['id']}/cancel", headers=evil))
    _refused(api.client.delete("/api/session", headers=evil))
    assert snapshot(api.url) == before
    assert api.client.get("/api/me").status_code == 200  # reading is not refused


def test_cookie_requests_with_neither_origin_nor_referer_are_refused(api: Api) -> None:
    job = _signed_in(api)
    before = snapshot(api.url)
    _refused(api.client.post("/api/jobs", json={"type": "noop"}))
    _refused(api.client.post(f"/api/jobs/{job['id']}/cancel"))
    assert snapshot(api.url) == before


def test_same_origin_cookie_requests_and_bearer_requests_go_through(api: Api) -> None:
    job = _signed_in(api)
    r = api.client.post(f"/api/jobs/{job['id']}/cancel",
                        headers={"Referer": f"{OWN}/?tab=jobs"})
    assert r.status_code == 200 and r.json["status"] == "cancelled"
    # A bearer token is not something a page can make a browser send: no origin check.
    r = api.client.post("/api/jobs", json={"type": "noop"},
                        headers={**api.alice.headers, "Origin": "http://evil.example"})
    assert r.status_code == 202
    # The default port is the same origin, written or not.
    r = api.client.post("/api/jobs", json={"type": "noop"},
                        headers={"Origin": "http://LOCALHOST:80"})
    assert r.status_code == 202


def test_behind_a_tls_proxy_the_https_origin_is_ours(api: Api, store, monkeypatch) -> None:
    from bgjobs.server.api import create_app

    monkeypatch.setenv("BGJOBS_COOKIE_SECURE", "1")
    client = create_app(store=store).test_client()
    client.post("/api/session", json={"token": api.alice.token})
    r = client.post("/api/jobs", json={"type": "noop"}, headers={"Origin": "https://localhost"})
    assert r.status_code == 202, r.json
    _refused(client.post("/api/jobs", json={"type": "noop"},
                         headers={"Origin": "https://localhost:8443"}))


def test_metrics_need_their_own_token(api: Api, store, monkeypatch) -> None:
    from bgjobs.server.api import create_app

    for headers in ({}, api.alice.headers, {"Authorization": "Bearer metrics-wrong"},
                    {"Authorization": METRICS_AUTH["Authorization"].replace("Bearer", "Basic")}):
        r = api.client.get("/metrics", headers=headers)
        assert r.status_code == 401 and r.json["error"]["code"] == "unauthorized"
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert api.client.get("/metrics", headers=METRICS_AUTH).status_code == 200

    monkeypatch.delenv("BGJOBS_METRICS_TOKEN")
    r = create_app(store=store).test_client().get("/metrics", headers=METRICS_AUTH)
    assert r.status_code == 403 and "BGJOBS_METRICS_TOKEN" in r.json["error"]["message"]


def test_security_headers(api: Api) -> None:
    page = api.client.get("/", headers={"Host": "127.0.0.1:8000"})
    assert page.status_code == 200
    policy = page.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in policy and "script-src 'self'" in policy
    assert "connect-src 'self' http://127.0.0.1:8001" in policy  # the events service
    assert "'unsafe-inline'" not in policy
    for response in (page, api.client.get("/api/me", headers=api.alice.headers),
                     api.client.get("/no/such/page"), api.client.get("/healthz")):
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
