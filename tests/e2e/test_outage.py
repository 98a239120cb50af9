"""A known database outage: every request that needs Postgres gets its 503 at once, the routes
that need none answer as usual, and both services recover by themselves."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.e2e.test_api_gunicorn import THREADS, WORKERS, _users, start_api  # noqa: F401
from tests.e2e.test_events_service import auth, start_events
from tests.procs import wait_until

# Far longer than any client below waits: a request that waited for the pool would time out.
POOL_TIMEOUT = "120"
CLIENT_TIMEOUT = 60


def test_an_outage_answers_at_once_and_recovery_is_automatic(
        start_api, private_cluster, tmp_path: Path) -> None:  # noqa: F811 - the fixture
    url = private_cluster.url()
    [token] = _users(url, ["olga"])
    server = start_api(url, BGJOBS_POOL_TIMEOUT=POOL_TIMEOUT)
    events = start_events(url, tmp_path / "events.log", BGJOBS_POOL_TIMEOUT=POOL_TIMEOUT)
    try:
        headers = auth(token)
        job = httpx.post(f"{server.base}/api/jobs", json={"type": "noop"}, headers=headers,
                         timeout=CLIENT_TIMEOUT).json()
        private_cluster.stop()

        # Three times as many requests at once as the API has threads: with each waiting for
        # the pool, the last would wait minutes; no client here waits more than a minute.
        needs_db = [f"/api/jobs/{job['id']}", "/api/jobs", "/api/me", "/healthz"]
        no_db = ["/api/openapi.json", "/"]
        paths = (needs_db + no_db) * (3 * WORKERS * THREADS // 6)

        def get(path: str) -> tuple[str, httpx.Response]:
            return path, httpx.get(f"{server.base}{path}", headers=headers,
                                   timeout=CLIENT_TIMEOUT)

        with ThreadPoolExecutor(len(paths)) as pool:
            answers = list(pool.map(get, paths))
        for path, response in answers:
            if path in no_db:
                assert response.status_code == 200, (path, response.text[:300])
            else:
                assert response.status_code == 503, (path, response.text[:300])
                assert response.json()["error"]["code"] == "database_unavailable"
                assert response.headers["Retry-After"]

        # A new event stream gets its 503 as quickly, and so does the events health check.
        stream = httpx.get(f"{events.base}/events/jobs/{job['id']}", headers=headers,
                           timeout=CLIENT_TIMEOUT)
        assert stream.status_code == 503, stream.text
        assert stream.json()["error"]["code"] == "database_unavailable"
        wait_until(lambda: httpx.get(f"{events.base}/events/healthz", timeout=CLIENT_TIMEOUT
                                     ).status_code == 503, 60, "the listener to notice")

        private_cluster.ensure_running()
        wait_until(lambda: httpx.get(f"{server.base}/api/jobs/{job['id']}", headers=headers,
                                     timeout=CLIENT_TIMEOUT).status_code == 200, 60,
                   "the API back", server.proc)
        wait_until(lambda: httpx.get(f"{events.base}/events/healthz", timeout=CLIENT_TIMEOUT
                                     ).status_code == 200, 60, "the listener back", events.proc)

        def stream_opens() -> bool:
            with httpx.stream("GET", f"{events.base}/events/jobs/{job['id']}", headers=headers,
                              timeout=CLIENT_TIMEOUT) as response:
                return response.status_code == 200

        wait_until(stream_opens, 60, "a stream to open again", events.proc)
    finally:
        events.proc.stop()
