"""The API as it runs in production: `bgjobs api`, a real gunicorn with worker processes and
threads, against a real Postgres."""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from bgjobs.core.db import make_pool
from bgjobs.core.store import Store
from tests.conftest import url_env
from tests.procs import BGJOBS, Proc, children_of, free_port, wait_until

WORKERS, THREADS = 2, 4


@dataclass
class Server:
    proc: Proc
    base: str

    def client(self, token: str | None = None) -> httpx.Client:
        """A client that opens a new connection per request, so requests spread over workers."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.base, headers=headers, timeout=30,
                            limits=httpx.Limits(max_keepalive_connections=0))

    def workers(self) -> set[int]:
        """The pids of the gunicorn master's worker processes."""
        return children_of(self.proc.pid)

    def tail(self) -> str:
        return self.proc.output()[-4000:]


@pytest.fixture
def start_api(tmp_path: Path) -> Iterator[Callable[[str], Server]]:
    procs: list[Proc] = []

    def start(url: str, **settings: str) -> Server:
        port = free_port()
        env = {**url_env(url), "BGJOBS_API_BIND": f"127.0.0.1:{port}",
               "BGJOBS_API_WORKERS": str(WORKERS), "BGJOBS_API_THREADS": str(THREADS),
               "BGJOBS_SECRET_KEY": "test", "BGJOBS_TASK_MODULES": "tests.api_task_fixtures",
               **settings}
        proc = Proc([BGJOBS, "api"], env=env, log_path=tmp_path / f"api-{port}.log")
        procs.append(proc)
        server = Server(proc, f"http://127.0.0.1:{port}")
        wait_until(lambda: httpx.get(f"{server.base}/healthz", timeout=10).status_code == 200,
                   60, "the API to answer /healthz", proc)
        wait_until(lambda: len(server.workers()) == WORKERS, 30, "both workers", proc)
        return server

    yield start
    for proc in procs:
        proc.stop()


def _users(url: str, names: list[str]) -> list[str]:
    pool = make_pool(url, min_size=1, max_size=2, open_wait=True)
    try:
        return [Store(pool).create_user(name)[1] for name in names]
    finally:
        pool.close()


@dataclass
class Tally:
    """What one client saw."""

    statuses: Counter = field(default_factory=Counter)
    served_by: Counter = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    def record(self, op: str, response: httpx.Response, expected: int) -> bool:
        self.statuses[response.status_code] += 1
        self.served_by[int(response.headers["X-Served-By"])] += 1
        if response.status_code != expected:
            self.problems.append(f"{op}: {response.status_code} {response.text[:200]}")
            return False
        return True


def _mixed_client(server: Server, token: str, requests: int, seed: int) -> Tally:
    """Create, get, list and cancel this user's jobs, checking each answer against the truth."""
    rng, tally = random.Random(seed), Tally()
    jobs: dict[str, str] = {}  # id -> the status it must have now
    with server.client(token) as client:
        for i in range(requests):
            pending = [j for j, s in jobs.items() if s == "pending"]
            op = "create" if i == 0 else rng.choices(
                ["create", "get", "list", "cancel"], [3, 3, 2, 2])[0]
            if op == "cancel" and not pending:
                op = "get"
            if op == "create":
                r = client.post("/api/jobs", json={
                    "type": "noop", "params": {"echo": i},
                    # Far in the future: nothing else touches these jobs during the test.
                    "run_after": "2999-01-01T00:00:00Z"})
                if tally.record(op, r, 202):
                    jobs[r.json()["id"]] = "pending"
            elif op == "get":
                job_id = rng.choice(list(jobs))
                r = client.get(f"/api/jobs/{job_id}")
                if tally.record(op, r, 200) and r.json()["status"] != jobs[job_id]:
                    tally.problems.append(f"get {job_id}: {r.json()['status']} != {jobs[job_id]}")
            elif op == "list":
                r = client.get("/api/jobs", params={"limit": 200})
                if tally.record(op, r, 200):
                    listed = {j["id"]: j["status"] for j in r.json()["jobs"]}
                    if listed != jobs:
                        tally.problems.append(f"list: {listed} != {jobs}")
            else:
                job_id = rng.choice(pending)
                r = client.post(f"/api/jobs/{job_id}/cancel")
                if tally.record(op, r, 200):
                    jobs[job_id] = "cancelled"
    return tally


def test_300_mixed_requests_over_two_workers(start_api, db_url: str, conn) -> None:
    clients, per_client = 6, 50
    tokens = _users(db_url, [f"user{i}" for i in range(clients)])
    server = start_api(db_url)
    workers = server.workers()

    with ThreadPoolExecutor(clients) as pool:
        tallies = list(pool.map(lambda i: _mixed_client(server, tokens[i], per_client, i),
                                range(clients)))

    statuses = sum((t.statuses for t in tallies), Counter())
    served_by = sum((t.served_by for t in tallies), Counter())
    problems = [p for t in tallies for p in t.problems]
    assert sum(statuses.values()) == clients * per_client == 300
    assert not problems, problems[:10]
    assert set(statuses) <= {200, 202}, statuses  # zero 404s, zero 5xx
    # Both worker processes answered, and nothing else did.
    assert set(served_by) == workers, (served_by, workers, server.tail())
    assert server.workers() == workers  # no worker was restarted along the way
    created = statuses[202]
    assert conn.execute("SELECT count(*) FROM background_jobs").fetchone()[0] == created


def test_racing_exclusive_posts_across_workers(start_api, db_url: str, conn) -> None:
    rounds = 10
    tokens = _users(db_url, [f"racer{i}" for i in range(rounds)])
    server = start_api(db_url)

    def race(token: str) -> list[httpx.Response]:
        barrier = threading.Barrier(2)

        def post(_: int) -> httpx.Response:
            with server.client(token) as client:
                barrier.wait()
                return client.post("/api/jobs", json={"type": "api_exclusive"})

        with ThreadPoolExecutor(2) as pool:
            return list(pool.map(post, range(2)))

    for token in tokens:
        responses = race(token)
        codes = sorted(r.status_code for r in responses)
        assert codes == [202, 409], [r.text for r in responses]
        winner = next(r for r in responses if r.status_code == 202).json()
        loser = next(r for r in responses if r.status_code == 409).json()
        assert loser["error"]["job_id"] == winner["id"]
    per_user = conn.execute("SELECT user_id, count(*) FROM background_jobs "
                            "GROUP BY user_id").fetchall()
    assert len(per_user) == rounds and all(n == 1 for _, n in per_user)


def test_database_down_gives_503_and_the_api_recovers_by_itself(start_api, private_cluster
                                                                ) -> None:
    url = private_cluster.url()
    [token] = _users(url, ["alice"])
    server = start_api(url)
    workers = server.workers()
    with server.client(token) as client:
        job = client.post("/api/jobs", json={"type": "noop"}).json()

        private_cluster.stop()
        down = client.get("/healthz")
        assert down.status_code == 503, down.text
        assert down.headers["Content-Type"] == "application/json"
        assert down.json()["error"]["code"] == "database_unavailable"
        for r in (client.get(f"/api/jobs/{job['id']}"), client.get("/api/jobs"),
                  client.post("/api/jobs", json={"type": "noop"})):
            assert r.status_code == 503 and r.json()["error"]["code"] == "database_unavailable"
            assert r.headers["Retry-After"]

        private_cluster.ensure_running()
        wait_until(lambda: client.get("/healthz").status_code == 200, 60,
                   "the API to see the database again", server.proc)
        # Every worker recovers, not just the one that answered the health check.
        recovered: set[int] = set()

        def both_workers_answer() -> bool:
            r = client.get(f"/api/jobs/{job['id']}")
            if r.status_code == 200:
                recovered.add(int(r.headers["X-Served-By"]))
            return recovered == workers

        wait_until(both_workers_answer, 60, "both workers to answer 200", server.proc)
        for _ in range(20):
            r = client.get(f"/api/jobs/{job['id']}")
            assert r.status_code == 200 and r.json()["id"] == job["id"], r.text
        created = client.post("/api/jobs", json={"type": "noop"})
        assert created.status_code == 202
    # The same master and the same workers throughout: nothing was restarted.
    assert server.proc.alive() and server.workers() == workers, server.tail()


def test_errors_are_json_through_gunicorn_too(start_api, db_url: str) -> None:
    """What the Flask tests check, once more through gunicorn's own request handling."""
    [token] = _users(db_url, ["carol"])
    server = start_api(db_url)
    json_headers = {"Content-Type": "application/json"}
    with server.client(token) as client:
        cases = [
            (client.post("/api/jobs", content=b'{"type": "noop", "params": {"echo": "'
                         + b"x" * 1_000_000 + b'"}}', headers=json_headers), 413),
            (client.post("/api/jobs", content=b"{", headers=json_headers), 400),
            (client.post("/api/jobs", content=b"type=noop"), 415),
            (client.post("/api/jobs", json={"type": "nope"}), 422),
            (client.get("/api/jobs/not-a-uuid"), 404),
            (client.get("/no/such/page"), 404),
            (client.delete("/api/jobs"), 405),
        ]
        for response, status in cases:
            assert response.status_code == status, response.text
            assert response.headers["Content-Type"] == "application/json"
            assert response.json()["error"]["message"]
        assert client.get("/api/jobs").json() == {"jobs": [], "next_cursor": None}
