"""A table of bad requests: each gets its 4xx JSON error, and the database is left as it was."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from tests.api_task_fixtures import EXCLUSIVE, METRICS_AUTH, Api, api_fixture, snapshot  # noqa: F401

JSON = {"Content-Type": "application/json"}
LIMIT = 256 * 1024


@dataclass(frozen=True)
class Case:
    id: str
    method: str
    path: str
    status: int
    code: str
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=lambda: dict(JSON))
    auth: bool = True


def _json(value: object) -> bytes:
    return json.dumps(value).encode()


def _nested(depth: int) -> bytes:
    return b'{"type": "noop", "params": {"echo": ' + b"[" * depth + b"]" * depth + b"}}"


CASES = [
    # Unreadable bodies.
    Case("no-content-type", "POST", "/api/jobs", 415, "unsupported_media_type",
         _json({"type": "noop"}), headers={}),
    Case("text-plain", "POST", "/api/jobs", 415, "unsupported_media_type",
         _json({"type": "noop"}), headers={"Content-Type": "text/plain"}),
    Case("form-encoded", "POST", "/api/jobs", 415, "unsupported_media_type", b"type=noop",
         headers={"Content-Type": "application/x-www-form-urlencoded"}),
    Case("malformed-json", "POST", "/api/jobs", 400, "malformed_json", b'{"type": "noop",'),
    Case("empty-body", "POST", "/api/jobs", 400, "bad_request", b""),
    Case("json-array", "POST", "/api/jobs", 400, "bad_request", b'[{"type": "noop"}]'),
    Case("json-string", "POST", "/api/jobs", 400, "bad_request", b'"noop"'),
    Case("not-utf8", "POST", "/api/jobs", 400, "malformed_json", b'{"type": "\xff\xfe"}'),
    Case("nan", "POST", "/api/jobs", 400, "malformed_json",
         b'{"type": "noop", "params": {"echo": NaN}}'),
    Case("huge-float", "POST", "/api/jobs", 400, "malformed_json",
         b'{"type": "noop", "params": {"echo": 1e999}}'),
    Case("nested-too-deep", "POST", "/api/jobs", 400, "malformed_json", _nested(100)),
    Case("nested-past-recursion-limit", "POST", "/api/jobs", 400, "malformed_json",
         _nested(50_000)),
    Case("too-large", "POST", "/api/jobs", 413, "payload_too_large",
         _json({"type": "noop", "params": {"echo": "x" * LIMIT}})),
    # Readable, but wrong.
    Case("missing-type", "POST", "/api/jobs", 422, "invalid_request", _json({"params": {}})),
    Case("type-not-string", "POST", "/api/jobs", 422, "invalid_request", _json({"type": 7})),
    Case("unknown-type", "POST", "/api/jobs", 422, "unknown_type", _json({"type": "nope"})),
    Case("unknown-field", "POST", "/api/jobs", 422, "invalid_request",
         _json({"type": "noop", "user_id": 2})),
    Case("params-not-object", "POST", "/api/jobs", 422, "invalid_params",
         _json({"type": "noop", "params": [1]})),
    Case("unknown-param", "POST", "/api/jobs", 422, "invalid_params",
         _json({"type": "noop", "params": {"bogus": 1}})),
    Case("param-wrong-type", "POST", "/api/jobs", 422, "invalid_params",
         _json({"type": EXCLUSIVE, "params": {"n": "three"}})),
    Case("param-out-of-range", "POST", "/api/jobs", 422, "invalid_params",
         _json({"type": EXCLUSIVE, "params": {"n": 1000}})),
    Case("nul-in-params", "POST", "/api/jobs", 422, "invalid_params",
         _json({"type": "noop", "params": {"echo": "a\u0000b"}})),
    Case("priority-string", "POST", "/api/jobs", 422, "invalid_request",
         _json({"type": "noop", "priority": "high"})),
    Case("priority-bool", "POST", "/api/jobs", 422, "invalid_request",
         _json({"type": "noop", "priority": True})),
    Case("priority-float", "POST", "/api/jobs", 422, "invalid_request",
         _json({"type": "noop", "priority": 1.5})),
    Case("priority-huge", "POST", "/api/jobs", 422, "invalid_request",
         _json({"type": "noop", "priority": 10**30})),
    Case("run-after-garbage", "POST", "/api/jobs", 422, "invalid_request",
         _json({"type": "noop", "run_after": "tomorrow"})),
    Case("run-after-naive", "POST", "/api/jobs", 422, "invalid_request",
         _json({"type": "noop", "run_after": "2030-01-01T00:00:00"})),
    Case("run-after-number", "POST", "/api/jobs", 422, "invalid_request",
         _json({"type": "noop", "run_after": 1700000000})),
    Case("idempotency-key-too-long", "POST", "/api/jobs", 400, "bad_request",
         _json({"type": "noop"}), headers={**JSON, "Idempotency-Key": "k" * 256}),
    Case("idempotency-key-control", "POST", "/api/jobs", 400, "bad_request",
         _json({"type": "noop"}), headers={**JSON, "Idempotency-Key": "a\tb"}),
    Case("idempotency-key-not-ascii", "POST", "/api/jobs", 400, "bad_request",
         _json({"type": "noop"}), headers={**JSON, "Idempotency-Key": "cl\u00e9"}),
    Case("exclusive-already-active", "POST", "/api/jobs", 409, "conflict",
         _json({"type": EXCLUSIVE})),
    # Ids that are not UUIDs, jobs that cannot be cancelled.
    Case("get-not-uuid", "GET", "/api/jobs/not-a-uuid", 404, "not_found"),
    Case("get-sql-ish-id", "GET", "/api/jobs/1%27%20OR%20%271%27=%271", 404, "not_found"),
    Case("cancel-not-uuid", "POST", "/api/jobs/123/cancel", 404, "not_found"),
    Case("cancel-finished", "POST", "/api/jobs/{cancelled}/cancel", 409, "conflict"),
    Case("cancel-missing", "POST",
         "/api/jobs/00000000-0000-4000-8000-000000000000/cancel", 404, "not_found"),
    # Query strings.
    Case("limit-zero", "GET", "/api/jobs?limit=0", 400, "bad_query"),
    Case("limit-too-big", "GET", "/api/jobs?limit=201", 400, "bad_query"),
    Case("limit-not-number", "GET", "/api/jobs?limit=ten", 400, "bad_query"),
    Case("status-unknown", "GET", "/api/jobs?status=done", 400, "bad_query"),
    Case("cursor-garbage", "GET", "/api/jobs?cursor=%%%", 400, "bad_query"),
    Case("cursor-wrong-shape", "GET", "/api/jobs?cursor=WzFd", 400, "bad_query"),
    Case("query-unknown", "GET", "/api/jobs?user_id=2", 400, "bad_query"),
    Case("type-nul", "GET", "/api/jobs?type=%00", 400, "bad_query"),
    Case("type-control", "GET", "/api/jobs?type=a%0Ab", 400, "bad_query"),
    Case("type-too-long", "GET", "/api/jobs?type=" + "t" * 51, 400, "bad_query"),
    Case("status-empty", "GET", "/api/jobs?status=", 400, "bad_query"),
    Case("type-empty", "GET", "/api/jobs?type=", 400, "bad_query"),
    Case("limit-empty", "GET", "/api/jobs?limit=", 400, "bad_query"),
    Case("cursor-empty", "GET", "/api/jobs?cursor=", 400, "bad_query"),
    Case("cursor-padded", "GET", "/api/jobs?cursor=WzFd%3D", 400, "bad_query"),
    # Routes and methods.
    Case("unknown-api-route", "GET", "/api/nothing-here", 404, "not_found"),
    Case("unknown-route", "GET", "/admin.php", 404, "not_found", auth=False),
    Case("unknown-seed-type", "POST", "/api/screening/run", 404, "not_found"),
    Case("trailing-slash", "GET", "/api/jobs/", 404, "not_found"),
    Case("delete-jobs", "DELETE", "/api/jobs", 405, "method_not_allowed"),
    Case("put-job", "PUT", "/api/jobs/{pending}", 405, "method_not_allowed"),
    Case("get-cancel", "GET", "/api/jobs/{pending}/cancel", 405, "method_not_allowed"),
    Case("post-healthz", "POST", "/healthz", 405, "method_not_allowed", auth=False),
    Case("sign-in-text", "POST", "/api/session", 415, "unsupported_media_type", b"token",
         headers={"Content-Type": "text/plain"}, auth=False),
    Case("sign-in-malformed", "POST", "/api/session", 400, "malformed_json", b"{", auth=False),
]


@pytest.fixture
def existing(api: Api) -> dict[str, str]:
    """Jobs already stored before each bad request: none of them may change."""
    def post(path: str, body: dict) -> str:
        r = api.client.post(path, json=body, headers=api.alice.headers)
        assert r.status_code == 202, r.json
        return r.json["id"]

    ids = {
        "pending": post("/api/jobs", {"type": "noop", "params": {"echo": "keep me"}}),
        "cancelled": post("/api/jobs", {"type": "noop"}),
        "exclusive": post("/api/jobs", {"type": EXCLUSIVE}),
    }
    api.client.post(f"/api/jobs/{ids['cancelled']}/cancel", headers=api.alice.headers)
    return ids


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(api: Api, existing: dict[str, str], case: Case) -> None:
    before = snapshot(api.url)
    headers = {**case.headers, **(api.alice.headers if case.auth else {})}
    r = api.client.open(case.path.format(**existing), method=case.method, data=case.body,
                        headers=headers)
    assert r.status_code == case.status, r.get_data(as_text=True)[:500]
    assert r.mimetype == "application/json"
    error = r.json["error"]
    assert error["code"] == case.code and error["message"], error
    assert "Traceback" not in error["message"] and "<html" not in r.get_data(as_text=True)
    if case.status == 405:
        assert case.method not in r.headers["Allow"]
    assert snapshot(api.url) == before


def test_a_chunked_body_over_the_limit_is_413(api: Api) -> None:
    import io

    before = snapshot(api.url)
    body = _json({"type": "noop", "params": {"echo": "x" * (10 * 1024 * 1024)}})
    # No Content-Length: the body arrives chunked, and gunicorn says where it ends.
    r = api.client.post("/api/jobs", input_stream=io.BytesIO(body),
                        headers={**JSON, **api.alice.headers},
                        environ_overrides={"wsgi.input_terminated": True,
                                           "HTTP_TRANSFER_ENCODING": "chunked"})
    assert r.status_code == 413, r.get_data(as_text=True)[:300]
    assert r.json["error"]["code"] == "payload_too_large"
    assert snapshot(api.url) == before


def test_unexpected_errors_are_a_generic_json_500_and_logged(api: Api, caplog) -> None:
    @api.app.get("/api/boom")
    def boom() -> None:
        raise RuntimeError("secret internals")

    r = api.client.get("/api/boom")
    assert r.status_code == 500 and r.mimetype == "application/json"
    assert r.json == {"error": {"code": "internal_error",
                                "message": "internal server error (logged)"}}
    assert "secret internals" in caplog.text


def test_unreachable_database_is_a_503(api: Api) -> None:
    from bgjobs.core.db import make_pool
    from bgjobs.core.store import Store
    from bgjobs.server.api import create_app
    from tests.procs import free_port

    pool = make_pool(f"postgresql://postgres@127.0.0.1:{free_port()}/nothing", max_size=2)
    pool.timeout = 1  # how long a request waits for a connection before its 503
    try:
        client = create_app(store=Store(pool)).test_client()
        for r in (client.get("/healthz"), client.get("/api/jobs", headers=api.alice.headers),
                  client.get("/metrics", headers=METRICS_AUTH)):
            assert r.status_code == 503 and r.headers["Retry-After"] == "5"
            assert r.json["error"]["code"] == "database_unavailable"
        # Credentials are checked against the database, but their absence is not.
        assert client.get("/api/jobs").status_code == 401
    finally:
        pool.close()
