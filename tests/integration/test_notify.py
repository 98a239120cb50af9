"""The triggers' NOTIFY on background_jobs_new and background_jobs_progress."""

from __future__ import annotations

import json

import bgjobs
from bgjobs.core.jobs import Attempt
from tests.conftest import add_job, drain


def progress_payloads(notes):
    return [json.loads(p) for ch, p in notes if ch == "background_jobs_progress"]


def test_insert_notifies_new_with_the_job_type_and_progress(listener, store):
    user, _ = store.create_user("n1")
    job = add_job(store, "noop", {"a": 1}, user_id=user.id)
    notes = drain(listener)
    assert ("background_jobs_new", "noop") in notes
    [payload] = progress_payloads(notes)
    assert payload == {"id": str(job.id), "user_id": user.id, "job_type": "noop",
                       "status": "pending", "version": 1, "progress": {}}


def test_every_progress_change_notifies_with_the_documented_payload(listener, store):
    job = add_job(store, "noop")
    [c] = store.claim("w", ["noop"])
    attempt = Attempt(job.id, "w", c.attempts)
    for n in range(1, 4):
        store.report_progress([(attempt, {"current": n, "total": 3, "stage": "s"})])
    store.complete([(attempt, {"ok": 1}, None)])
    payloads = progress_payloads(drain(listener))
    assert [p["status"] for p in payloads] == ["pending", "running", "running", "running",
                                               "running", "complete"]
    assert [p["progress"].get("current") for p in payloads[2:5]] == [1, 2, 3]
    versions = [p["version"] for p in payloads]
    assert versions == sorted(versions) and len(set(versions)) == len(versions)
    assert all(set(p) == {"id", "user_id", "job_type", "status", "version", "progress"}
               for p in payloads)


def test_heartbeats_are_silent(listener, store):
    job = add_job(store, "noop")
    [c] = store.claim("w", ["noop"])
    drain(listener)
    assert store.heartbeat([Attempt(job.id, "w", c.attempts)]) == {job.id}
    assert drain(listener) == []


def test_an_oversized_progress_sends_the_id_only(listener, store):
    job = add_job(store, "noop")
    [c] = store.claim("w", ["noop"])
    drain(listener)
    store.report_progress([(Attempt(job.id, "w", c.attempts), {"log": "x" * 10_000})])
    [payload] = progress_payloads(drain(listener))
    assert payload == {"id": str(job.id)}


def test_retry_and_requeue_wake_workers_again(listener, store, conn):
    job = add_job(store, "noop")
    store.claim("w", ["noop"])
    drain(listener)
    store.requeue(job.id)
    assert ("background_jobs_new", "noop") in drain(listener)
    conn.execute("SELECT bgjobs_cancel(%s)", (job.id,))
    assert ("background_jobs_new", "noop") not in drain(listener)


def test_released_dependents_are_told_by_id_per_user_per_hundred(listener, store, conn):
    """020: waiting -> pending changes no status, yet the streams must see it; a release of
    250 sends three {"ids"} payloads (100, 100, 50) and one wake, not a notification per job."""
    user, _ = store.create_user("fan")
    root = add_job(store, "noop", user_id=user.id)
    dependents = bgjobs.enqueue_many("noop", [None] * 250, after=[root],
                                     user_id=user.id, store=store)
    waiting = add_job(store, "noop", user_id=user.id)  # waits for root and one more job
    slow = bgjobs.enqueue("noop", after=[root, waiting], user_id=user.id, store=store)
    [c] = store.claim("w", ["noop"])
    assert c.id == root.id
    drain(listener)
    store.complete([(Attempt(root.id, "w", c.attempts), {"ok": 1}, None)])
    notes = drain(listener)
    released = [p for p in progress_payloads(notes) if "ids" in p]
    assert sorted(len(p["ids"]) for p in released) == [50, 100, 100]
    assert all(p["user_id"] == user.id for p in released)
    told = {i for p in released for i in p["ids"]}
    assert told == {str(j.id) for j in dependents}  # not `slow`: it still waits for one
    assert [n for n in notes if n[0] == "background_jobs_new"] == [
        ("background_jobs_new", "*noop")]
    assert conn.execute("SELECT waiting_for FROM background_jobs WHERE id = %s",
                        (slow.id,)).fetchone() == (1,)
