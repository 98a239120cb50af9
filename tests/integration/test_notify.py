"""The triggers' NOTIFY on background_jobs_new and background_jobs_progress."""

from __future__ import annotations

import json

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
