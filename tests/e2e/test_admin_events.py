"""The all-jobs stream of the events service: admins only, built from the notifications."""

from __future__ import annotations

import httpx

from bgjobs.core.store import Store
from tests.conftest import add_job
from tests.e2e import test_events_service as ev

events = ev.events  # the same fixture: a real `bgjobs events` process


def test_admins_see_every_job_change_and_others_are_refused(events: ev.EventsService,
                                                           store: Store) -> None:
    alice, alice_token = store.create_user("alice")
    _, root_token = store.create_user("root", is_admin=True)
    url = f"{events.base}/events/admin/jobs"
    assert httpx.get(url, timeout=5).status_code == 401
    refused = httpx.get(url, headers=ev.auth(alice_token), timeout=5)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    assert events.stats()["subscriptions"] == 0

    reader = ev.Reader(url, ev.auth(root_token))
    events.wait_stats(lambda s: s["all_jobs_streams"] == 1, "the all-jobs stream subscribed")
    hers = add_job(store, "noop", user_id=alice.id)
    nobodys = add_job(store, "demo")
    store.cancel(hers.id)
    reader.wait_for(lambda j: j["id"] == str(hers.id) and j["status"] == "cancelled",
                    "alice's job cancelled")
    seen = reader.wait_for(lambda j: j["id"] == str(nobodys.id), "a job of nobody's")["data"]
    assert seen["type"] == "demo" and seen["status"] == "pending" and seen["user_id"] is None
    reader.close()
    events.wait_stats(lambda s: s["subscriptions"] == 0, "the stream freed")
