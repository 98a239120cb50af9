"""examples/seed_app from outside: start it with its one command, sign in, start jobs and check
their progress through its own routes. Used by its e2e test and by `make bench`."""

from __future__ import annotations

import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
from werkzeug.security import generate_password_hash

from tests.conftest import url_env
from tests.procs import ROOT, Proc, free_port, wait_until

EXAMPLE = ROOT / "examples" / "seed_app"
DEMO = ("demo@example.com", "demo")


@dataclass
class Example:
    """A running example: the app's base URL, the events service's, and the process behind."""

    base: str
    events: str
    proc: Proc


def start(url: str, log: Path, *argv: str, **env: str) -> Example:
    """``python run.py`` (or ``argv``) in the example's folder against ``url``; ready when it
    answers (the app, and the events service if run.py starts one)."""
    app_bind, events_bind = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    proc = Proc(list(argv) or [sys.executable, "run.py"],
                {**url_env(url), "SEED_APP_BIND": app_bind, "BGJOBS_EVENTS_BIND": events_bind,
                 "SEED_APP_ACCESS_LOG": "/dev/null", **env}, log, cwd=EXAMPLE)
    example = Example(f"http://{app_bind}", f"http://{events_bind}", proc)
    try:
        wait_until(lambda: httpx.get(f"{example.base}/login", timeout=2).status_code == 200,
                   90, "the example app answering", proc)
        if not argv:
            wait_until(lambda: httpx.get(f"{example.events}/events/healthz",
                                         timeout=2).status_code == 200, 90, "events up", proc)
    except BaseException:
        proc.stop()
        raise
    return example


def add_user(url: str, email: str, password: str) -> int:
    """A user of the app (its own users table), with a cheap password hash (tests only)."""
    hashed = generate_password_hash(password, method="pbkdf2:sha256:1000")
    with psycopg.connect(url) as conn:
        return conn.execute("INSERT INTO users (email, password_hash) VALUES (%s, %s) "
                            "RETURNING id", (email, hashed)).fetchone()[0]


@dataclass(frozen=True)
class Check:
    """One progress check: the answer, how long it took, which worker process answered."""

    status: int
    seconds: float
    pid: int
    body: dict[str, Any]


class SeedClient:
    """A signed-in user of the example, through the app's own routes."""

    def __init__(self, base: str, email: str = DEMO[0], password: str = DEMO[1]) -> None:
        self.base = base
        signed_in = httpx.post(f"{base}/login", data={"email": email, "password": password},
                               timeout=30)
        assert signed_in.status_code == 302, signed_in.text[:300]
        self.cookies = dict(signed_in.cookies)

    def post(self, path: str, body: dict[str, Any] | None = None,
             origin: str | None = None) -> httpx.Response:
        """A POST with JSON, from the app's own origin as a browser on its page sends it
        (``origin``: another page's)."""
        return httpx.post(f"{self.base}{path}", json=body, cookies=self.cookies, timeout=30,
                          headers={"Origin": origin or self.base})

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"{self.base}{path}", cookies=self.cookies, timeout=30)

    def start(self, feature: str, params: dict[str, Any] | None = None) -> str:
        answer = self.post(f"/api/{feature}/run", params or {})
        assert answer.status_code == 202, answer.text
        return answer.json()["job_id"]

    def progress(self, feature: str, job_id: str) -> dict[str, Any]:
        answer = self.get(f"/api/{feature}/progress/{job_id}")
        assert answer.status_code == 200, answer.text
        return answer.json()

    def wait_progress(self, feature: str, job_id: str, what: str, predicate: Any,
                      timeout: float = 120) -> dict[str, Any]:
        return wait_until(lambda: (p := self.progress(feature, job_id)) and predicate(p) and p,
                          timeout, what)  # type: ignore[return-value]

    def check_progress(self, feature: str, job_id: str, clients: int,
                       total: int) -> list[Check]:
        """``total`` progress checks from ``clients`` concurrent clients, each on a new
        connection (so the kernel spreads them over the app's worker processes)."""
        checks: list[Check] = []
        lock = threading.Lock()
        start = threading.Barrier(clients)
        url = f"{self.base}/api/{feature}/progress/{job_id}"

        def client(count: int) -> None:
            with httpx.Client(cookies=self.cookies, timeout=60,
                              limits=httpx.Limits(max_keepalive_connections=0)) as http:
                start.wait()
                for _ in range(count):
                    began = time.perf_counter()
                    answer = http.get(url)
                    took = time.perf_counter() - began
                    body = answer.json() if answer.headers.get(
                        "content-type", "").startswith("application/json") else {}
                    with lock:
                        checks.append(Check(answer.status_code, took,
                                            int(answer.headers.get("X-Served-By", 0)), body))

        threads = [threading.Thread(target=client, args=(total // clients
                                                         + (n < total % clients),))
                   for n in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return checks


def percentiles(checks: list[Check]) -> dict[str, float]:
    """p50 and p99 latency of the checks, in milliseconds."""
    ms = sorted(c.seconds * 1000 for c in checks)
    return {"p50_ms": round(statistics.median(ms), 1),
            "p99_ms": round(statistics.quantiles(ms, n=100)[98], 1)}
