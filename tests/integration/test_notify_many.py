"""Statements that insert or requeue many jobs notify per statement, not per row (010)."""

from __future__ import annotations

import json

import bgjobs
from tests.conftest import drain


def test_inserting_many_jobs_sends_one_wake_for_everyone_and_ids_by_user_in_hundreds(
        listener, store, conn):
    alice, _ = store.create_user("many_a")
    bob, _ = store.create_user("many_b")
    made = bgjobs.enqueue_many("noop", [{"echo": n} for n in range(250)], user_id=alice.id,
                               store=store)
    conn.execute("INSERT INTO background_jobs (job_type, user_id) "
                 "SELECT 'noop', %s FROM generate_series(1, 3)", [bob.id])
    notes = drain(listener)
    assert [p for ch, p in notes if ch == "background_jobs_new"] == ["*noop", "*noop"]
    payloads = [json.loads(p) for ch, p in notes if ch == "background_jobs_progress"]
    assert all(set(p) == {"ids", "user_id"} and len(p["ids"]) <= 100 for p in payloads)
    by_user: dict[int, list[str]] = {}
    for p in payloads:
        by_user.setdefault(p["user_id"], []).extend(p["ids"])
    assert sorted(by_user[alice.id]) == sorted(str(j.id) for j in made)
    assert len(by_user[bob.id]) == 3 and len(payloads) == 3 + 1


def test_one_job_still_notifies_with_its_state_and_wakes_one_worker(listener, store):
    job = bgjobs.enqueue("noop", {"echo": 1}, store=store)
    notes = drain(listener)
    assert ("background_jobs_new", "noop") in notes
    [payload] = [json.loads(p) for ch, p in notes if ch == "background_jobs_progress"]
    assert payload == {"id": str(job.id), "user_id": None, "job_type": "noop",
                       "status": "pending", "version": 1, "progress": {}}


def test_many_jobs_made_claimable_again_at_once_wake_everyone(listener, store, conn):
    jobs = bgjobs.enqueue_many("noop", [{}, {}, {}], store=store)
    store.claim("w", ["noop"], limit=3)
    drain(listener)
    conn.execute("UPDATE background_jobs SET status = 'pending', worker_id = NULL "
                 "WHERE id = ANY(%s)", [[j.id for j in jobs[:2]]])
    assert [p for ch, p in drain(listener) if ch == "background_jobs_new"] == ["*noop"]
    store.requeue(jobs[2].id)
    assert [p for ch, p in drain(listener) if ch == "background_jobs_new"] == ["noop"]
