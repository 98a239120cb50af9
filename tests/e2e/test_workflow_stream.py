"""A workflow as one SSE stream (`GET /events/workflows/<id>`) from a real `bgjobs events`,
with real `bgjobs worker`s running the jobs."""

from __future__ import annotations

import json
import socket
import uuid
from typing import Any

import httpx
import psycopg

import bgjobs
from bgjobs.core.jobs import Attempt
from bgjobs.core.store import Store
from tests.e2e.test_events_service import (  # noqa: F401 (fixture)
    EventsService,
    Reader,
    _rss_kib,
    auth,
    claim,
    events,
    read_to_end,
)
from tests.e2e.test_workers import start_worker  # noqa: F401 (fixture)
from tests.task_fixtures import add_up  # noqa: F401 (registers the type in this process)


def job_states(received: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Each job's states, in the order the stream sent them."""
    states: dict[str, list[dict[str, Any]]] = {}
    for event in received:
        if "event" not in event:
            states.setdefault(event["data"]["id"], []).append(event["data"])
    return states


def summaries(received: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in received if e.get("event") == "summary"]


def is_waiting(job: dict[str, Any]) -> bool:
    return job["status"] == "pending" and job["waiting_for"] > 0


def test_a_workflow_streams_every_jobs_states_a_summary_and_ends(
        events: EventsService, store: Store, db_url: str, start_worker) -> None:  # noqa: F811
    user, token = store.create_user("flow")
    with bgjobs.workflow(user_id=user.id, store=store) as wf:
        root = wf.enqueue("add_up", {"n": 1})
        group = wf.enqueue_many("add_up", [{"n": n} for n in range(3)], after=[root])
        # No worker runs noop: the last job shows its release (waiting -> pending, 020).
        last = wf.enqueue("noop", after=group)
    other = bgjobs.enqueue("add_up", user_id=user.id, store=store)  # not in the workflow
    url = f"{events.base}/events/workflows/{wf.id}"
    reader = Reader(url, auth(token))
    first = reader.wait_for(lambda d: "total" in d, "the first summary")
    assert reader.status == 200
    assert first["data"] == {"workflow_id": str(wf.id), "total": 5, "done": 0,
                             "finished": False, "failed": None,
                             "by_status": {"waiting": 4, "pending": 1, "running": 0,
                                           "complete": 0, "error": 0, "cancelled": 0}}
    snapshot = job_states(reader.events)
    assert set(snapshot) == {str(j.id) for j in wf.jobs}
    assert all(is_waiting(s[0]) for i, s in snapshot.items() if i != str(root.id))

    worker = start_worker(db_url, "--types", "add_up")
    released = reader.wait_for(
        lambda d: d.get("id") == str(last.id) and d["status"] == "pending"
        and d["waiting_for"] == 0, "the last job released", timeout=30)
    assert int(released["id"]) == released["data"]["version"]
    [claimed] = store.claim("test-worker", ["noop"])
    assert claimed.id == last.id
    assert store.complete([(Attempt(last.id, "test-worker", claimed.attempts), {"ok": 1},
                            None)]) == {last.id}
    received = reader.join()
    assert reader.clean_end

    states = job_states(received)
    assert set(states) == {str(j.id) for j in wf.jobs}  # never `other`
    assert str(other.id) not in states
    for job_id, seen in states.items():
        versions = [s["version"] for s in seen]
        assert versions == sorted(set(versions)), (job_id, versions)
        assert seen[-1] == store.get_job(uuid.UUID(job_id)).to_json()
        assert seen[-1]["status"] == "complete"
    for job in group:  # each dependent: waiting, then (released, running or) complete
        assert is_waiting(states[str(job.id)][0]) and len(states[str(job.id)]) >= 2
    final = received[-1]
    assert final["event"] == "summary"
    assert final["data"]["finished"] and final["data"]["done"] == 5
    assert final["data"]["by_status"]["complete"] == 5
    done = [s["data"]["done"] for s in summaries(received)]
    assert done == sorted(done) and len(done) >= 2
    assert worker.alive()

    # Reconnecting with the final summary's id: nothing more to say (EventSource stops).
    again = httpx.get(url, headers={**auth(token), "Last-Event-ID": final["id"]}, timeout=5)
    assert again.status_code == 204
    # Any other id (or none): every job's state again, the summary, and the end.
    replay = Reader(url, {**auth(token), "Last-Event-ID": "w1"}).join()
    assert {i: s[-1] for i, s in job_states(replay).items()} == {
        i: s[-1] for i, s in states.items()}
    assert replay[-1] == final
    events.wait_stats(lambda s: s["subscriptions"] == 0, "no subscriptions left")


def test_a_failure_and_a_cancel_end_the_stream_with_the_failed_job(
        events: EventsService, store: Store, db_url: str, start_worker, conn) -> None:  # noqa: F811
    user, token = store.create_user("fails")
    with bgjobs.workflow(user_id=user.id, store=store) as wf:
        bad = wf.enqueue("fatal")
        after = wf.enqueue_many("add_up", [{"n": 1}, {"n": 2}], after=[bad])
    reader = Reader(f"{events.base}/events/workflows/{wf.id}", auth(token))
    reader.wait_for(lambda d: "total" in d, "the first summary")
    start_worker(db_url, "--types", "fatal,add_up")
    received = reader.join()
    states = job_states(received)
    assert states[str(bad.id)][-1]["status"] == "error"
    for job in after:
        assert states[str(job.id)][-1]["status"] == "cancelled"
        assert states[str(job.id)][-1]["result"]["error"] == "DependencyFailed"
    final = received[-1]["data"]
    assert final["finished"] and final["failed"] == str(bad.id)
    assert final["by_status"] == {"waiting": 0, "pending": 0, "running": 0, "complete": 0,
                                  "error": 1, "cancelled": 2}

    # A DBA cancels a whole workflow nobody runs: the stream says so and ends.
    with bgjobs.workflow(user_id=user.id, store=store) as parked:
        first = parked.enqueue("noop")
        parked.enqueue("noop", after=[first])
    reader = Reader(f"{events.base}/events/workflows/{parked.id}", auth(token))
    reader.wait_for(lambda d: "total" in d, "the first summary")
    conn.execute("SELECT bgjobs_cancel_workflow(%s)", (parked.id,))
    received = reader.join()
    assert {s[-1]["status"] for s in job_states(received).values()} == {"cancelled"}
    final = received[-1]["data"]
    assert final["finished"] and final["failed"] in {str(j.id) for j in parked.jobs}
    assert final["by_status"]["cancelled"] == 2


def test_another_users_or_an_unknown_workflow_is_404_and_no_credentials_401(
        events: EventsService, store: Store) -> None:  # noqa: F811
    alice, _ = store.create_user("alice")
    _, bob_token = store.create_user("bob")
    with bgjobs.workflow(user_id=alice.id, store=store) as wf:
        wf.enqueue("noop")
    base = f"{events.base}/events/workflows"
    assert httpx.get(f"{base}/{wf.id}", timeout=5).status_code == 401
    for bad in (f"{base}/{wf.id}", f"{base}/{uuid.uuid4()}", f"{base}/not-a-uuid"):
        response = httpx.get(bad, headers=auth(bob_token), timeout=5)
        assert response.status_code == 404, bad
        assert response.json()["error"]["code"] == "not_found"
    assert events.stats()["subscriptions"] == 0


def test_a_client_that_names_the_current_summary_gets_only_what_follows(
        events: EventsService, store: Store, conn) -> None:  # noqa: F811
    user, token = store.create_user("resume")
    with bgjobs.workflow(user_id=user.id, store=store) as wf:
        first = wf.enqueue("noop")
        wf.enqueue("noop", after=[first])
    url = f"{events.base}/events/workflows/{wf.id}"
    reader = Reader(url, auth(token))
    summary = reader.wait_for(lambda d: "total" in d, "the first summary")
    assert summary["id"] == f"w{summary_versions(conn, wf.id)}"
    reader.close()
    # EventSource's reconnect names the last id it saw: the summary's. Nothing changed since,
    # so no snapshot; the next change, then the end, come as usual.
    resumed = Reader(url, {**auth(token), "Last-Event-ID": summary["id"]})
    events.wait_stats(lambda s: s["subscriptions"] == 1, "the resumed stream subscribed")
    conn.execute("SELECT bgjobs_cancel_workflow(%s)", (wf.id,))
    received = resumed.join()
    assert resumed.status == 200
    assert all(e["data"]["version"] > 1 for e in received if "event" not in e), received
    assert {s[-1]["status"] for s in job_states(received).values()} == {"cancelled"}
    assert received[-1]["data"]["finished"]


def summary_versions(conn, workflow_id: uuid.UUID) -> int:
    return conn.execute("SELECT sum(version) FROM background_jobs WHERE workflow_id = %s",
                        (workflow_id,)).fetchone()[0]


def test_a_slow_reader_of_a_workflow_does_not_grow_memory(
        events: EventsService, store: Store, db_url: str) -> None:  # noqa: F811
    user, token = store.create_user("slow")
    with bgjobs.workflow(user_id=user.id, store=store) as wf:
        busy = wf.enqueue("noop")
        after = wf.enqueue("noop", after=[busy])
    attempt = claim(store, busy.id)
    updates, padding = 10_000, "x" * 6500  # 65 MB of progress: far beyond socket buffers

    host, port = events.base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=60)
    with sock:
        sock.sendall(f"GET /events/workflows/{wf.id} HTTP/1.1\r\nHost: {host}\r\n"
                     f"Authorization: Bearer {token}\r\n\r\n".encode())
        head = b""
        while b"event: summary" not in head:
            head += sock.recv(4096)
        assert head.startswith(b"HTTP/1.1 200")
        pid = events.wait_stats(lambda s: s["subscriptions"] == 1, "subscribed")["pid"]
        rss_before = _rss_kib(pid)

        # The reader now reads nothing while 10,000 progress updates are written.
        with psycopg.connect(db_url, autocommit=True) as writer, writer.pipeline():
            writer.cursor().executemany(
                "UPDATE background_jobs SET progress = %s WHERE id = %s",
                [(json.dumps({"current": i, "total": updates, "note": padding}), busy.id)
                 for i in range(1, updates + 1)])
        stats = events.wait_stats(lambda s: s["notifications"] >= updates,
                                  "the service to see every notification", 120)
        assert stats["pending_max"] <= 2, stats  # one waiting state per job of the workflow
        grown_mib = (_rss_kib(pid) - rss_before) / 1024
        assert grown_mib < 25, f"RSS grew {grown_mib:.0f} MiB for a reader that reads nothing"

        store.complete([(attempt, "done", None)])
        [claimed] = store.claim("test-worker", ["noop"])
        assert claimed.id == after.id
        store.complete([(Attempt(after.id, "test-worker", claimed.attempts), "done", None)])
        received = read_to_end(sock, head)
    jobs = [r for r in received if "version" in r]
    for job in (busy, after):
        versions = [r["version"] for r in jobs if r["id"] == str(job.id)]
        assert versions == sorted(set(versions)), versions
    assert len(jobs) < updates, "a slow reader gets the latest state, not every one"
    assert received[-1]["finished"] and received[-1]["done"] == 2
    events.wait_stats(lambda s: s["subscriptions"] == 0, "subscription freed")
