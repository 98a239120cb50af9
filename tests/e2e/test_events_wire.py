"""`bgjobs events` writes streams' news straight to their sockets (server/fanout.py)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from bgjobs.core.store import Store
from tests.conftest import add_job
from tests.e2e.test_events_service import (
    EventsService,
    Reader,
    auth,
    claim,
    read_to_end,
    start_events,
)


@pytest.fixture
def service(db_url: str, tmp_path: Path) -> Iterator[EventsService]:
    events = start_events(db_url, tmp_path / "events.log")
    yield events
    assert events.proc.stop() == 0, events.proc.output()[-3000:]


def test_job_and_user_streams_are_written_past_send_and_end_cleanly(
        service: EventsService, store: Store) -> None:
    user, token = store.create_user("wired")
    job = add_job(store, "noop", user_id=user.id)
    one = Reader(f"{service.base}/events/jobs/{job.id}", auth(token))
    mine = Reader(f"{service.base}/events/jobs", auth(token))
    try:
        one.wait_events(1)
        service.wait_stats(lambda s: s["subscriptions"] == 2, "both streams open")
        attempt = claim(store, job.id)
        for n in range(1, 6):
            store.report_progress([(attempt, {"current": n, "total": 5})])
            one.wait_for(lambda j, n=n: j["progress"].get("current") == n, f"progress {n}")
        store.complete([(attempt, {"ok": True}, None)])
        events = one.join()
        mine.wait_for(lambda j: j["status"] == "complete", "the user stream's final state")
    finally:
        mine.close()
    assert one.clean_end  # the last chunk came through `send`, after the fan-out's chunks
    versions = [e["data"]["version"] for e in events]
    assert versions == sorted(set(versions)) and events[-1]["data"]["status"] == "complete"
    stats = service.wait_stats(lambda s: s["subscriptions"] == 0, "streams freed")
    # Every state after each stream's first was written by the fan-out's batches.
    assert stats["fanout_writes"] >= 2 * 6, stats


def test_a_reader_that_stops_reading_is_handed_back_to_its_task_and_gets_the_final_state(
        service: EventsService, store: Store, db_url: str) -> None:
    user, token = store.create_user("stalled")
    job = add_job(store, "noop", user_id=user.id)
    attempt = claim(store, job.id)
    host, port = service.base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=60)
    with sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(f"GET /events/jobs/{job.id} HTTP/1.1\r\nHost: {host}\r\n"
                     f"Authorization: Bearer {token}\r\n\r\n".encode())
        head = b""
        while b"data:" not in head:
            head += sock.recv(4096)
        service.wait_stats(lambda s: s["subscriptions"] == 1, "subscribed")
        updates, padding = 2000, "x" * 6500  # 13 MB: far beyond the socket's buffers
        with psycopg.connect(db_url, autocommit=True) as writer, writer.pipeline():
            writer.cursor().executemany(
                "UPDATE background_jobs SET progress = %s WHERE id = %s",
                [(json.dumps({"current": i, "note": padding}), job.id)
                 for i in range(1, updates + 1)])
        stats = service.wait_stats(lambda s: s["notifications"] >= updates
                                   and s["fanout_handed_back"] >= 1,
                                   "the stalled stream handed back to its task", 60)
        assert stats["pending_max"] <= 1, stats
        store.complete([(attempt, "done", None)])
        received = read_to_end(sock, head)
    versions = [r["version"] for r in received]
    assert versions == sorted(set(versions))
    assert received[-1]["status"] == "complete"
    assert len(received) < updates, "a stalled reader gets the latest state, not every one"
