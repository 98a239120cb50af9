"""Batched worker writes notify once per statement for status changes, per row for progress."""

from __future__ import annotations

import json

from bgjobs.core.jobs import Attempt
from tests.conftest import drain


def test_batches_notify_every_row_and_heartbeats_stay_silent(listener, store, conn):
    conn.execute("INSERT INTO background_jobs (job_type) SELECT 'noop' FROM generate_series(1, 5)")
    notes = drain(listener)
    # Many rows in one statement: every idle worker may claim ('*'), and the ids in one payload
    # (010_cheaper_notify.sql).
    assert notes.count(("background_jobs_new", "*noop")) == 1
    [inserted] = [json.loads(p) for ch, p in notes if ch == "background_jobs_progress"]
    stored = [row[0] for row in conn.execute("SELECT id::text FROM background_jobs")]
    assert inserted["user_id"] is None and sorted(inserted["ids"]) == sorted(stored)

    jobs = store.claim("w", ["noop"], limit=5)
    attempts = [Attempt(j.id, "w", j.attempts) for j in jobs]
    # Many status changes in one statement: their ids, which listeners read (010).
    [claimed] = [json.loads(p) for _, p in drain(listener)]
    assert claimed["user_id"] is None
    assert sorted(claimed["ids"]) == sorted(str(j.id) for j in jobs)

    store.heartbeat(attempts)
    assert drain(listener) == []

    store.report_progress([(a, {"current": 1, "total": 2}) for a in attempts[:2]])
    store.complete([(a, {"ok": True}, None) for a in attempts[:3]])
    store.fail([(attempts[3], {"error": "E", "message": "m"}, True, 0.0),
                (attempts[4], {"error": "E", "message": "m"}, False, 0.0)])
    notes = drain(listener)
    assert notes.count(("background_jobs_new", "noop")) == 1  # the retried job is claimable
    payloads = [json.loads(p) for ch, p in notes if ch == "background_jobs_progress"]
    # Progress writes send each job's state (listeners apply it without reading the row).
    states = [p for p in payloads if "status" in p]
    assert [(p["status"], p["progress"]) for p in states] == [
        ("running", {"current": 1, "total": 2})] * 2
    assert {p["id"] for p in states} == {str(a.job_id) for a in attempts[:2]}
    batches = [p for p in payloads if "ids" in p]
    assert len(batches) == 2  # the completions, the failures
    assert sorted(i for b in batches for i in b["ids"]) == sorted(str(j.id) for j in jobs)
