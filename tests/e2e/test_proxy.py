"""nginx in front (`bgjobs proxy`, the shipped site config): slow clients no longer stall the API,
streams still stream, and what nginx refuses itself is the API's JSON error."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from bgjobs.core.store import Store
from tests.conftest import url_env
from tests.e2e.test_events_service import Reader, auth
from tests.e2e.test_hostile_http import assert_json_error, raw
from tests.procs import BGJOBS, Proc, free_port, wait_until

SLOW_SECONDS = 60  # the longest a slow client dribbles (it is stopped as soon as it is done)


def nginx() -> None:
    if shutil.which("nginx") or os.access("/usr/sbin/nginx", os.X_OK):
        return
    message = "nginx is not installed (apt-get install nginx; .ci/run does it in CI)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


class SlowClient:
    """POST /api/session with a 1,000-byte body sent one byte a second: a slow-loris."""

    def __init__(self, base: str) -> None:
        url = httpx.URL(base)
        self.sock = socket.create_connection((url.host, url.port), timeout=30)
        self.sock.sendall(b"POST /api/session HTTP/1.1\r\nHost: " + url.netloc
                          + b"\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n")
        self.stopped = threading.Event()
        self.sent = 0
        self.thread = threading.Thread(target=self._dribble, daemon=True)
        self.thread.start()

    def _dribble(self) -> None:
        with contextlib.suppress(OSError):
            while self.sent < SLOW_SECONDS and not self.stopped.wait(1.0):
                self.sock.sendall(b" ")
                self.sent += 1

    @property
    def dribbling(self) -> bool:
        return self.thread.is_alive()

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(5)
        self.sock.close()


@dataclass
class Front:
    api: str  # gunicorn itself
    proxy: str  # nginx in front of it
    procs: dict[str, Proc]


@pytest.fixture
def front(db_url: str, tmp_path: Path) -> Iterator[Front]:
    nginx()
    api, events, listen = (f"127.0.0.1:{free_port()}" for _ in range(3))
    # One worker with two threads: two slow clients are enough to hold them all.
    env = {**url_env(db_url), "BGJOBS_API_BIND": api, "BGJOBS_EVENTS_BIND": events,
           "BGJOBS_PROXY_BIND": listen, "BGJOBS_API_WORKERS": "1", "BGJOBS_API_THREADS": "2",
           "BGJOBS_SECRET_KEY": "test", "BGJOBS_EVENTS_URL": "/",
           "BGJOBS_DATA_DIR": str(tmp_path / "data")}
    procs = {name: Proc([BGJOBS, name], env, tmp_path / f"{name}.log")
             for name in ("api", "events", "proxy")}
    try:
        for name, url in [("api", f"http://{api}/healthz"),
                          ("events", f"http://{events}/events/healthz"),
                          ("proxy", f"http://{listen}/events/healthz")]:
            wait_until(lambda u=url: httpx.get(u, timeout=5).status_code == 200, 60,
                       f"{name} up", procs[name])
        yield Front(f"http://{api}", f"http://{listen}", procs)
    finally:
        for proc in procs.values():
            proc.stop()


def _stalls(base: str) -> bool:
    """True when /healthz gets no answer within 5 s."""
    try:
        httpx.get(f"{base}/healthz", timeout=5)
    except httpx.TimeoutException:
        return True
    return False


def test_slow_clients_stall_gunicorn_alone_but_not_behind_nginx(front: Front) -> None:
    # Without the proxy: four slow clients hold both threads, and /healthz waits.
    direct = [SlowClient(front.api) for _ in range(4)]
    try:
        wait_until(lambda: _stalls(front.api), 60, "gunicorn alone to stall")
    finally:
        for client in direct:
            client.stop()
    wait_until(lambda: httpx.get(f"{front.api}/healthz", timeout=5).status_code == 200, 60,
               "gunicorn to recover once they are gone", front.procs["api"])

    # Behind nginx: ten of them (the number), and /healthz answers at once, each time.
    behind = [SlowClient(front.proxy) for _ in range(10)]
    try:
        for _ in range(5):
            response = httpx.get(f"{front.proxy}/healthz", timeout=30)
            assert response.status_code == 200, response.text
        assert all(client.dribbling for client in behind), "the slow clients stopped early"
    finally:
        for client in behind:
            client.stop()


def test_through_the_proxy_streams_stream_and_nginx_answers_in_json(
        front: Front, store: Store) -> None:
    user, token = store.create_user("proxied")
    base = front.proxy
    reader = Reader(f"{base}/events/jobs", auth(token))
    wait_until(lambda: reader.status == 200, 30, "the stream through nginx")
    created = httpx.post(f"{base}/api/jobs", json={"type": "noop"}, headers=auth(token),
                         timeout=30)
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    assert reader.wait_for(lambda j: j["id"] == job_id, "the new job, unbuffered")
    reader.close()

    # A browser signed in through the proxy: its own origin passes the Origin check (nginx
    # forwards the Host with its port), the API's direct one does not.
    with httpx.Client(base_url=base, timeout=30) as browser:
        assert browser.post("/api/session", json={"token": token}).status_code == 200
        ok = browser.post("/api/jobs", json={"type": "noop"}, headers={"Origin": base})
        assert ok.status_code == 202, ok.text
        refused = browser.post("/api/jobs", json={"type": "noop"},
                               headers={"Origin": front.api})
        assert refused.status_code == 403

    too_large = b'{"type": "noop", "params": {"echo": "' + b"x" * 1_000_000 + b'"}}'
    request = (b"POST /api/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(too_large) + too_large)
    assert assert_json_error(*raw(base, request), 413)["code"] == "payload_too_large"
    huge_header = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 9000 + b"\r\n\r\n"
    assert_json_error(*raw(base, huge_header), 400)

    # The API down: nginx says so in JSON too, and the events service still streams.
    front.procs["api"].stop()
    gone = httpx.get(f"{base}/api/me", headers=auth(token), timeout=30)
    assert gone.status_code == 502 and gone.headers["content-type"] == "application/json"
    assert json.loads(gone.text)["error"]["code"] == "unavailable"
    assert httpx.get(f"{base}/events/healthz", timeout=30).status_code == 200
