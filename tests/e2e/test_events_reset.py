"""The events service when a row's version goes back: an open stream gets the older state, and
a reconnect whose Last-Event-ID is above the row's version gets the row, never a 204."""

from __future__ import annotations

import httpx

from bgjobs.core.jobs import Attempt
from bgjobs.core.store import Store
from tests.conftest import add_job
from tests.e2e.test_events_service import EventsService, Reader, auth, claim, events  # noqa: F401
from tests.integration.test_events_versions import restore


def test_streams_and_reconnects_follow_a_row_that_went_back(
        events: EventsService, store: Store, db_url: str) -> None:  # noqa: F811 - the fixture
    user, token = store.create_user("alice")
    job = add_job(store, "noop", user_id=user.id)
    url = f"{events.base}/events/jobs/{job.id}"
    reader = Reader(url, auth(token))
    reader.wait_events(1)
    attempt: Attempt = claim(store, job.id)
    for step in range(1, 5):
        store.report_progress([(attempt, {"current": step, "total": 4})])
    assert int(reader.wait_for(lambda j: j["version"] == 6, "version 6")["id"]) == 6

    restore(db_url, job, 2, "running", {"restored": True})
    back = reader.wait_for(lambda j: j["progress"] == {"restored": True}, "the restored state")
    assert back["id"] == "2"
    store.cancel(job.id)
    final = reader.join()[-1]
    assert final["data"]["status"] == "cancelled" and final["id"] == "3"

    # A browser that saw version 6 reconnects: the row is at 3 now, finished. It gets the row
    # (and the stream ends), not a 204 that would stop EventSource for good.
    again = httpx.get(url, headers={**auth(token), "Last-Event-ID": "6"}, timeout=30)
    assert again.status_code == 200, again.text
    assert '"status":"cancelled"' in again.text and "id: 3" in again.text
    # With the final version itself, it is up to date: 204 as before.
    done = httpx.get(url, headers={**auth(token), "Last-Event-ID": "3"}, timeout=30)
    assert done.status_code == 204
