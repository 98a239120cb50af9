"""The SSE events service as a real process (`bgjobs events` under gunicorn's asgi worker)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from bgjobs.core.db import make_pool
from bgjobs.core.jobs import Attempt
from bgjobs.core.store import Store
from bgjobs.server.auth import SESSION_COOKIE, make_session
from bgjobs.server.broadcast import APPLICATION_NAME
from tests.conftest import add_job, dbname, url_env
from tests.procs import BGJOBS, Proc, free_port, wait_until

SECRET = "test"
METRICS_TOKEN = "events-metrics-test"


@dataclass
class EventsService:
    base: str
    proc: Proc
    started: float = 0.0  # time.time() just before the process started

    def stats(self) -> dict[str, Any]:
        return httpx.get(f"{self.base}/events/stats", timeout=5,
                         headers=auth(METRICS_TOKEN)).json()

    def wait_stats(self, predicate: Callable[[dict[str, Any]], bool], what: str,
                   timeout: float = 20) -> dict[str, Any]:
        return wait_until(lambda: (s := self.stats()) and predicate(s) and s, timeout, what,
                          self.proc)  # type: ignore[return-value]


def start_events(url: str, log: Path, **settings: str) -> EventsService:
    port = free_port()
    env = {**url_env(url), "BGJOBS_EVENTS_BIND": f"127.0.0.1:{port}",
           "BGJOBS_SECRET_KEY": SECRET, "BGJOBS_METRICS_TOKEN": METRICS_TOKEN, **settings}
    started = time.time()
    proc = Proc([BGJOBS, "events"], env=env, log_path=log)
    service = EventsService(f"http://127.0.0.1:{port}", proc, started)
    try:
        wait_until(lambda: httpx.get(f"{service.base}/events/healthz", timeout=2).status_code
                   == 200, 60, "events service up and listening", proc)
    except BaseException:
        proc.stop()
        raise
    return service


@pytest.fixture
def events(db_url: str, tmp_path: Path) -> Iterator[EventsService]:
    service = start_events(db_url, tmp_path / "events.log")
    yield service
    assert service.proc.stop() == 0, service.proc.output()[-3000:]


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def sse_events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """Parse SSE lines into {"id", "data"} events (comments and pings skipped)."""
    event: dict[str, Any] = {}
    for line in lines:
        if not line:
            if "data" in event:
                event["data"] = json.loads(event["data"])
                yield event
            event = {}
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            event["data"] = event["data"] + "\n" + value if "data" in event else value
        elif name in ("id", "event", "retry"):
            event[name] = value


class Reader:
    """An SSE client in a thread, on a plain socket so that ``close()`` hangs up at once."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        parsed = httpx.URL(url)
        self.events: list[dict[str, Any]] = []
        self.status: int | None = None
        self.ended = threading.Event()
        self.error: BaseException | None = None
        self.clean_end = False  # the server ended the body (last chunk), not a dropped socket
        self._sock = socket.create_connection((parsed.host, parsed.port or 80), timeout=120)
        lines = [f"GET {parsed.raw_path.decode()} HTTP/1.1", f"Host: {parsed.netloc.decode()}",
                 "Accept: text/event-stream", *(f"{k}: {v}" for k, v in headers.items())]
        self._sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            with self._sock.makefile("rb") as body:
                self.status = int(body.readline().split()[1])
                while body.readline() not in (b"\r\n", b""):
                    pass
                for event in sse_events(_chunked_lines(body, self)):
                    self.events.append(event)
        except (OSError, ValueError) as exc:
            self.error = exc
        finally:
            self.ended.set()

    def wait_events(self, count: int, timeout: float = 20) -> list[dict[str, Any]]:
        wait_until(lambda: len(self.events) >= count or self.ended.is_set(), timeout,
                   f"{count} events")
        assert len(self.events) >= count, (self.error, self.events)
        return self.events

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], what: str,
                 timeout: float = 20) -> dict[str, Any]:
        """The first event whose job matches ``predicate``."""
        def found() -> dict[str, Any] | None:
            return next((e for e in self.events if predicate(e["data"])), None)

        wait_until(lambda: found() or self.ended.is_set(), timeout, what)
        event = found()
        assert event is not None, (what, self.error, self.events)
        return event

    def join(self, timeout: float = 30) -> list[dict[str, Any]]:
        """Wait for the server to end the stream."""
        assert self.ended.wait(timeout), "the stream did not end"
        self.close()
        assert self.error is None, self.error
        return self.events

    def close(self) -> None:
        """Hang up (a browser tab closing)."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(10)
        self._sock.close()


def _chunked_lines(body: Any, reader: Reader) -> Iterator[str]:
    """The lines of a chunked HTTP body, until its last chunk (or the connection closes)."""
    pending = b""
    while True:
        size_line = body.readline()
        if not size_line:
            return
        if int(size_line.split(b";")[0], 16) == 0:
            reader.clean_end = True
            return
        pending += body.read(int(size_line.split(b";")[0], 16))
        body.readline()
        *complete, pending = pending.split(b"\n")
        for line in complete:
            yield line.rstrip(b"\r").decode()


def claim(store: Store, job_id: uuid.UUID) -> Attempt:
    (job,) = store.claim("test-worker", ["noop"])
    assert job.id == job_id
    return Attempt(job.id, "test-worker", job.attempts)


# Tests -------------------------------------------------------------------------------------


def test_subscriber_gets_every_state_in_order_then_final_and_stream_ends(
        events: EventsService, store: Store) -> None:
    user, token = store.create_user("alice")
    job = add_job(store, "noop", {"n": 1}, user_id=user.id)
    reader = Reader(f"{events.base}/events/jobs/{job.id}", auth(token))
    assert reader.wait_events(1)[0]["data"]["status"] == "pending"
    assert reader.status == 200

    attempt = claim(store, job.id)
    written = [("running", {})]
    reader.wait_events(2)
    for step in range(1, 21):
        progress = {"current": step, "total": 20, "stage": f"step {step}"}
        assert store.report_progress([(attempt, progress)]) == {job.id}
        written.append(("running", progress))
        # Lockstep: each state must arrive before the next is written (a client that keeps
        # up gets every state; one that does not gets the latest, see the slow-reader test).
        reader.wait_events(len(written) + 1)
    assert store.complete([(attempt, {"answer": 42}, {"current": 20, "total": 20})]) == {job.id}
    received = reader.join()

    versions = [int(e["id"]) for e in received]
    assert versions == sorted(set(versions)), versions
    assert [e["data"]["version"] for e in received] == versions
    got = [(e["data"]["status"], e["data"]["progress"]) for e in received]
    assert got[0] == ("pending", {})
    assert got[1:-1] == written
    final = received[-1]["data"]
    assert final == store.get_job(job.id).to_json()
    assert final["status"] == "complete" and final["result"] == {"answer": 42}
    events.wait_stats(lambda s: s["subscriptions"] == 0, "no subscriptions left")


def test_two_hundred_clients_all_get_the_final_event_one_listen_connection(
        events: EventsService, store: Store, conn: psycopg.Connection, db_url: str) -> None:
    user, token = store.create_user("crowd")
    job = add_job(store, "noop", user_id=user.id)
    clients = 200

    async def one(client: httpx.AsyncClient) -> dict[str, Any]:
        async with client.stream("GET", f"{events.base}/events/jobs/{job.id}",
                                 headers=auth(token)) as response:
            assert response.status_code == 200
            last: dict[str, Any] = {}
            buffer: list[str] = []
            async for line in response.aiter_lines():
                buffer.append(line)
            for event in sse_events(iter(buffer)):
                last = event["data"]
            return last

    async def crowd() -> list[dict[str, Any]]:
        limits = httpx.Limits(max_connections=clients + 10)
        async with httpx.AsyncClient(limits=limits,
                                     timeout=httpx.Timeout(30, read=120)) as client:
            tasks = [asyncio.create_task(one(client)) for _ in range(clients)]
            await asyncio.to_thread(
                events.wait_stats, lambda s: s["subscriptions"] == clients,
                f"{clients} subscriptions", 60)
            attempt = claim(store, job.id)
            store.report_progress([(attempt, {"current": 1, "total": 2})])
            store.complete([(attempt, {"ok": True}, {"current": 2, "total": 2})])
            return await asyncio.gather(*tasks)

    finals = asyncio.run(crowd())
    assert len(finals) == clients
    assert all(f["status"] == "complete" and f["result"] == {"ok": True} for f in finals)
    events.wait_stats(lambda s: s["subscriptions"] == 0, "all subscriptions freed")
    # This service's connections only: the session's PgBouncer (tests/pgbouncer.py) keeps
    # idle server connections named by the clients that used them, another test's events too.
    listening = conn.execute(
        "SELECT pid, backend_start, state, query FROM pg_stat_activity WHERE datname = %s "
        "AND application_name = %s AND backend_start >= to_timestamp(%s)",
        (dbname(db_url), APPLICATION_NAME, events.started)).fetchall()
    assert len(listening) == 1, listening


def test_auth_other_users_job_is_404_and_no_credentials_401(
        events: EventsService, store: Store) -> None:
    alice, alice_token = store.create_user("alice")
    _, bob_token = store.create_user("bob")
    job = add_job(store, "noop", user_id=alice.id)
    url = f"{events.base}/events/jobs/{job.id}"

    for headers in ({}, auth("bgj_wrong"), {"Cookie": f"{SESSION_COOKIE}=forged"}):
        for path in (url, f"{events.base}/events/jobs"):
            response = httpx.get(path, headers=headers, timeout=5)
            assert response.status_code == 401, (path, headers)
            assert response.json()["error"]["code"] == "unauthorized"

    for bad in (url, f"{events.base}/events/jobs/{uuid.uuid4()}",
                f"{events.base}/events/jobs/not-a-uuid"):
        response = httpx.get(bad, headers=auth(bob_token), timeout=5)
        assert response.status_code == 404
        assert response.headers["content-type"] == "application/json"
        assert response.json()["error"]["code"] == "not_found"
    assert events.stats()["subscriptions"] == 0

    # The API's session cookie works as well as a bearer token.
    session_user = store.user_for_token(alice_token)
    assert session_user is not None
    session_id = store.start_session(session_user, 3600)
    cookie = {"Cookie": f"{SESSION_COOKIE}={make_session(SECRET, session_id)}"}
    reader = Reader(url, cookie)
    assert reader.wait_events(1)[0]["data"]["id"] == str(job.id)
    store.cancel(job.id)
    assert reader.join()[-1]["data"]["status"] == "cancelled"


def test_cors_allows_the_api_origin_with_credentials(events: EventsService,
                                                     store: Store) -> None:
    _, token = store.create_user("alice")
    origin = "http://127.0.0.1:8000"
    response = httpx.get(f"{events.base}/events/jobs/{uuid.uuid4()}",
                         headers={**auth(token), "Origin": origin}, timeout=5)
    assert response.headers["access-control-allow-origin"] == origin
    assert response.headers["access-control-allow-credentials"] == "true"
    response = httpx.get(f"{events.base}/events/healthz",
                         headers={"Origin": "http://evil.example"}, timeout=5)
    assert "access-control-allow-origin" not in response.headers


def test_last_event_id_resume_gets_the_current_state_and_nothing_stale(
        events: EventsService, store: Store) -> None:
    user, token = store.create_user("alice")
    job = add_job(store, "noop", user_id=user.id)
    url = f"{events.base}/events/jobs/{job.id}"

    first = Reader(url, auth(token))
    seen = int(first.wait_events(1)[0]["id"])
    first.close()  # the browser goes away: no more reading
    events.wait_stats(lambda s: s["subscriptions"] == 0, "the first client's subscription freed")

    attempt = claim(store, job.id)
    for step in range(1, 4):
        store.report_progress([(attempt, {"current": step, "total": 10})])
    current = store.get_job(job.id)

    resumed = Reader(url, {**auth(token), "Last-Event-ID": str(seen)})
    (event,) = resumed.wait_events(1)
    assert int(event["id"]) == current.version > seen
    assert event["data"] == current.to_json()
    resumed.close()
    events.wait_stats(lambda s: s["subscriptions"] == 0, "the resumed client's subscription freed")

    # Already up to date: nothing is sent until the job changes, then only the change.
    up_to_date = Reader(url, {**auth(token), "Last-Event-ID": str(current.version)})
    events.wait_stats(lambda s: s["subscriptions"] == 1, "the up-to-date client subscribed")
    store.report_progress([(attempt, {"current": 4, "total": 10})])
    store.complete([(attempt, "done", None)])
    received = up_to_date.join()
    assert [e["data"]["progress"].get("current") for e in received][0] == 4
    assert all(int(e["id"]) > current.version for e in received)
    assert received[-1]["data"]["status"] == "complete"

    # A client that has the final state is told to stop reconnecting.
    final = store.get_job(job.id)
    response = httpx.get(url, headers={**auth(token), "Last-Event-ID": str(final.version)},
                         timeout=5)
    assert response.status_code == 204


def test_user_stream_sees_changes_to_all_own_jobs_including_new_ones(
        events: EventsService, store: Store) -> None:
    alice, token = store.create_user("alice")
    bob, _ = store.create_user("bob")
    reader = Reader(f"{events.base}/events/jobs", auth(token))
    events.wait_stats(lambda s: s["subscriptions"] == 1, "the user stream subscribed")
    mine = add_job(store, "noop", user_id=alice.id)
    add_job(store, "noop", user_id=bob.id)
    theirs_done = reader.wait_events(1)
    assert theirs_done[0]["data"]["id"] == str(mine.id)
    store.cancel(mine.id)
    received = reader.wait_events(2)
    assert received[1]["data"]["status"] == "cancelled"
    assert {e["data"]["user_id"] for e in received} == {alice.id}
    reader.close()
    events.wait_stats(lambda s: s["subscriptions"] == 0, "the user stream freed")


def test_sigterm_ends_open_streams_cleanly_and_the_service_exits(db_url: str, store: Store,
                                                                 tmp_path: Path) -> None:
    service = start_events(db_url, tmp_path / "events.log")
    _, token = store.create_user("alice")
    reader = Reader(f"{service.base}/events/jobs", auth(token))
    service.wait_stats(lambda s: s["subscriptions"] == 1, "the stream subscribed")
    assert service.proc.stop() == 0
    reader.join()
    assert reader.clean_end, "the stream was cut, not ended"


def test_postgres_restart_mid_stream_the_client_still_gets_the_final_state(
        private_cluster: Any, tmp_path: Path) -> None:
    url = private_cluster.url()
    store = Store(make_pool(url, min_size=1, max_size=4, open_wait=True))
    service = start_events(url, tmp_path / "events.log")
    try:
        user, token = store.create_user("alice")
        job = add_job(store, "noop", user_id=user.id)
        reader = Reader(f"{service.base}/events/jobs/{job.id}", auth(token))
        reader.wait_events(1)
        attempt = claim(store, job.id)
        store.report_progress([(attempt, {"current": 1, "total": 2})])
        reader.wait_for(lambda job: job["progress"].get("current") == 1, "progress 1/2")
        reconnects = service.stats()["reconnects"]

        private_cluster.stop()
        service.wait_stats(lambda s: not s["listen_connected"], "the listener noticing")
        private_cluster.ensure_running()
        # Written as soon as Postgres is back, likely before the listener has reconnected:
        # the re-read after reconnecting must deliver it.
        wait_until(lambda: store.complete([(attempt, {"ok": 1}, None)]) == {job.id}, 30,
                   "completing the job after the restart")
        received = reader.join(60)
        assert received[-1]["data"]["status"] == "complete"
        assert received[-1]["data"]["result"] == {"ok": 1}
        stats = service.wait_stats(lambda s: s["listen_connected"], "the listener back")
        assert stats["reconnects"] > reconnects
        assert "LISTEN connection lost" in service.proc.output()
    finally:
        service.proc.stop()
        store.pool.close()


def test_a_slow_reader_does_not_grow_memory(events: EventsService, store: Store,
                                            db_url: str) -> None:
    user, token = store.create_user("alice")
    job = add_job(store, "noop", user_id=user.id)
    attempt = claim(store, job.id)
    updates, padding = 10_000, "x" * 6500  # 65 MB of progress: far beyond socket buffers

    host, port = events.base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    with sock:
        sock.sendall(f"GET /events/jobs/{job.id} HTTP/1.1\r\nHost: {host}\r\n"
                     f"Authorization: Bearer {token}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head or b"data:" not in head:
            head += sock.recv(4096)
        assert head.startswith(b"HTTP/1.1 200")
        pid = events.wait_stats(lambda s: s["subscriptions"] == 1, "subscribed")["pid"]
        rss_before = _rss_kib(pid)

        # The reader now reads nothing while 10,000 progress updates are written.
        with psycopg.connect(db_url, autocommit=True) as writer, writer.pipeline():
            writer.cursor().executemany(
                "UPDATE background_jobs SET progress = %s WHERE id = %s",
                [(json.dumps({"current": i, "total": updates, "note": padding}), job.id)
                 for i in range(1, updates + 1)])
        stats = events.wait_stats(lambda s: s["notifications"] >= updates + 1,
                                  "the service to see every notification", 120)
        # The subscription holds one waiting state (the latest), not a backlog.
        assert stats["pending_max"] <= 1, stats
        grown_mib = (_rss_kib(pid) - rss_before) / 1024
        assert grown_mib < 25, f"RSS grew {grown_mib:.0f} MiB for a reader that reads nothing"

        store.complete([(attempt, "done", None)])
        received = read_to_end(sock, head)
    versions = [r["version"] for r in received]
    assert versions == sorted(set(versions))
    assert received[-1]["status"] == "complete"
    assert len(received) < updates, "a slow reader gets the latest state, not every one"
    events.wait_stats(lambda s: s["subscriptions"] == 0, "subscription freed")


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def read_to_end(sock: socket.socket, head: bytes) -> list[dict]:
    """The events of a chunked stream whose first bytes were ``head``, read until it ends."""
    body = head
    while not body.endswith(b"0\r\n\r\n"):
        chunk = sock.recv(1 << 16)
        if not chunk:
            break
        body += chunk
    return [json.loads(line[5:]) for line in body.decode().splitlines()
            if line.startswith("data:")]
