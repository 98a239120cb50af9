"""Batched worker writes notify once per changed row, as single-row writes do (002_workers)."""

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
    claimed = [json.loads(p) for _, p in drain(listener)]
    assert sorted(p["id"] for p in claimed) == sorted(str(j.id) for j in jobs)
    assert {(p["status"], p["version"]) for p in claimed} == {("running", 2)}

    store.heartbeat(attempts)
    assert drain(listener) == []

    store.report_progress([(a, {"current": 1, "total": 2}) for a in attempts[:2]])
    store.complete([(a, {"ok": True}, None) for a in attempts[:3]])
    store.fail([(attempts[3], {"error": "E", "message": "m"}, True, 0.0),
                (attempts[4], {"error": "E", "message": "m"}, False, 0.0)])
    notes = drain(listener)
    assert notes.count(("background_jobs_new", "noop")) == 1  # the retried job is claimable
    payloads = [json.loads(p) for ch, p in notes if ch == "background_jobs_progress"]
    assert sorted(p["status"] for p in payloads) == ["complete"] * 3 + ["error", "pending"] + [
        "running"] * 2
    assert all(p["version"] == store.get_job(p["id"]).version or p["status"] == "running"
               for p in payloads)
