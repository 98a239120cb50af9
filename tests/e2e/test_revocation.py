"""Ending a credential ends the event streams it opened: revoking a user's tokens ends all of
their streams, signing out ends the session's; everyone else's stay open."""

from __future__ import annotations

import httpx

from bgjobs.core.store import Store
from bgjobs.server.auth import SESSION_COOKIE, make_session
from tests.conftest import add_job
from tests.e2e.test_events_service import (  # noqa: F401
    SECRET,
    EventsService,
    Reader,
    auth,
    events,
)


def test_revoking_and_signing_out_end_exactly_their_streams(
        events: EventsService, store: Store) -> None:  # noqa: F811 - the fixture
    alice, token = store.create_user("alice")
    _, second_token = store.create_token("alice")
    _, bob_token = store.create_user("bob")
    job = add_job(store, "noop", user_id=alice.id)
    session_id = store.start_session(store.user_for_token(token), 3600)
    cookie = {"Cookie": f"{SESSION_COOKIE}={make_session(SECRET, session_id)}"}
    base = events.base
    by_cookie = Reader(f"{base}/events/jobs", cookie)
    by_token = Reader(f"{base}/events/jobs/{job.id}", auth(token))
    by_second = Reader(f"{base}/events/jobs", auth(second_token))
    by_bob = Reader(f"{base}/events/jobs", auth(bob_token))
    events.wait_stats(lambda s: s["subscriptions"] == 4, "four streams open")

    # Signing out ends the session's stream, and only that one.
    store.end_session(session_id)
    by_cookie.join()
    assert by_cookie.clean_end
    events.wait_stats(lambda s: s["subscriptions"] == 3, "the session's stream gone")
    again = httpx.get(f"{base}/events/jobs", headers=cookie, timeout=30)
    assert again.status_code == 401  # EventSource's reconnect: refused, so it stops

    # Revoking alice's tokens ends every stream they opened; bob's goes on.
    assert store.revoke_tokens("alice") == 2
    for reader in (by_token, by_second):
        reader.join()
        assert reader.clean_end
    events.wait_stats(lambda s: s["subscriptions"] == 1, "only bob's stream left")
    for headers in (auth(token), auth(second_token)):
        assert httpx.get(f"{base}/events/jobs", headers=headers, timeout=30).status_code == 401
    bobs = add_job(store, "noop", user_id=store.get_user("bob").id)
    assert by_bob.wait_for(lambda j: j["id"] == str(bobs.id), "bob's new job")
    by_bob.close()
