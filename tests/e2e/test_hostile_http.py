"""Requests no app ever sees (gunicorn refuses them itself), oversized chunked bodies, and more
streams than the events service allows: every answer is the JSON error, nothing is stored."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from pathlib import Path

import httpx

from tests.api_task_fixtures import snapshot
from tests.e2e.test_api_gunicorn import Server, _users, start_api  # noqa: F401
from tests.e2e.test_events_service import METRICS_TOKEN, Reader, auth, start_events

# Each is a request gunicorn's parser refuses before the app: (name, raw request, status).
MALFORMED = [
    ("bad-content-length", b"POST /api/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
     400),
    ("nul-in-header", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", 400),
    ("bare-cr-in-header", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n", 400),
    ("lf-in-header-name", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX\nA: b\r\n\r\n", 400),
    ("obs-fold", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n", 400),
    ("uri-too-long", b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    ("header-too-large", b"GET / HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 9000 + b"\r\n\r\n",
     431),
    ("too-many-headers", b"GET / HTTP/1.1\r\nHost: x\r\n"
     + b"".join(b"X-%d: a\r\n" % i for i in range(120)) + b"\r\n", 431),
]


def raw(base: str, data: bytes, timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
    """Send ``data`` as it is; the status, headers and body of the answer."""
    host, port = httpx.URL(base).host, httpx.URL(base).port
    with socket.create_connection((host, port), timeout=timeout) as sock:
        # The server may answer (and close) before it has read everything: send aside.
        sender = threading.Thread(target=_send_all, args=(sock, data), daemon=True)
        sender.start()
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        sender.join(timeout)
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    if headers.get("transfer-encoding") == "chunked":
        body = _unchunk(body)
    return int(lines[0].split()[1]), headers, body


def _send_all(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):  # the server answered early and hung up
        sock.sendall(data)


def _unchunk(body: bytes) -> bytes:
    out = b""
    while body:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out, body = out + body[:size], body[size + 2:]
    return out


def assert_json_error(status: int, headers: dict[str, str], body: bytes, expected: int) -> dict:
    assert status == expected, (status, body[:300])
    assert headers["content-type"] == "application/json", headers
    error = json.loads(body)["error"]
    assert error["code"] and error["message"] and "<html" not in error["message"]
    return error


def test_requests_gunicorn_refuses_and_chunked_floods_get_the_json_error(
        start_api, db_url: str) -> None:  # noqa: F811 - the fixture imported above
    [token] = _users(db_url, ["dave"])
    server: Server = start_api(db_url)
    before = snapshot(db_url)
    for name, request_bytes, status in MALFORMED:
        try:
            assert_json_error(*raw(server.base, request_bytes), status)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from None

    body = b'{"type": "noop", "params": {"echo": "' + b"x" * (10 * 1024 * 1024) + b'"}}'
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 65536]), body[i:i + 65536])
                      for i in range(0, len(body), 65536)) + b"0\r\n\r\n"
    request = (b"POST /api/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token.encode()
               + b"\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
               b"Connection: close\r\n\r\n" + chunks)
    error = assert_json_error(*raw(server.base, request), 413)
    assert error["code"] == "payload_too_large"
    assert snapshot(db_url) == before
    assert httpx.get(f"{server.base}/healthz", timeout=30).status_code == 200


def test_the_events_service_answers_them_in_json_too(db_url: str, tmp_path: Path) -> None:
    service = start_events(db_url, tmp_path / "events.log")
    try:
        for name, request_bytes, status in MALFORMED:
            try:
                assert_json_error(*raw(service.base, request_bytes), status)
            except AssertionError as exc:
                raise AssertionError(f"{name}: {exc}") from None
    finally:
        service.proc.stop()


def test_streams_past_the_cap_get_a_json_503_and_stats_need_the_token(
        db_url: str, store, tmp_path: Path) -> None:
    user, token = store.create_user("crowd")
    service = start_events(db_url, tmp_path / "events.log", BGJOBS_EVENTS_CONNECTIONS="3")
    readers: list[Reader] = []
    try:
        readers = [Reader(f"{service.base}/events/jobs", auth(token)) for _ in range(3)]
        service.wait_stats(lambda s: s["subscriptions"] == 3, "three streams open")
        refused = httpx.get(f"{service.base}/events/jobs", headers=auth(token), timeout=30)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "too_many_streams"
        assert refused.headers["retry-after"]
        assert httpx.get(f"{service.base}/events/healthz", timeout=30).status_code == 200

        readers.pop().close()
        service.wait_stats(lambda s: s["subscriptions"] == 2, "a stream freed")
        readers.append(Reader(f"{service.base}/events/jobs", auth(token)))
        service.wait_stats(lambda s: s["subscriptions"] == 3, "the freed slot used again")

        for headers in ({}, auth(token), auth("wrong")):
            r = httpx.get(f"{service.base}/events/stats", headers=headers, timeout=30)
            assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        assert httpx.get(f"{service.base}/events/stats", headers=auth(METRICS_TOKEN),
                         timeout=30).status_code == 200
    finally:
        for reader in readers:
            reader.close()
        service.proc.stop()
