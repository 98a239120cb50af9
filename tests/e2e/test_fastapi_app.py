"""examples/fastapi_app as its README runs it (gunicorn's asgi worker, a bgjobs worker): headless
Chromium signs in with the app's own users table, starts a report, and follows its progress bar
to done through the event stream mounted in the app (bgjobs.asgi); over HTTP, a signed-in user
cancels a running report (its coroutine is cancelled) that another user cannot."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest

from tests.conftest import url_env
from tests.e2e.test_browser import chromium, headless_chromium
from tests.procs import BGJOBS, ROOT, Proc, assert_no_tracebacks, free_port, wait_http, wait_until

EXAMPLE = ROOT / "examples" / "fastapi_app"
GUNICORN = str(Path(sys.executable).parent / "gunicorn")


class Example(NamedTuple):
    origin: str
    app: Proc
    worker: Proc


@pytest.fixture
def example(host_db_url: str, tmp_path: Path) -> Iterator[Example]:
    """The app under gunicorn and a worker, with two users: demo@ and other@example.com."""
    env = {**url_env(host_db_url), "BGJOBS_TASK_MODULES": "jobs", "PYTHONPATH": str(EXAMPLE),
           "SECRET_KEY": "e2e"}
    for user in ("demo", "other"):
        setup = subprocess.run([sys.executable, "app.py", "setup", f"{user}@example.com", user],
                               env=env, cwd=EXAMPLE, capture_output=True, text=True,
                               timeout=60)
        assert setup.returncode == 0, setup.stderr
    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    app = Proc([GUNICORN, "-k", "asgi", "-b", f"127.0.0.1:{port}", "app:app"], env,
               tmp_path / "app.log", cwd=EXAMPLE)
    # A handler that ignores its cancellation is killed after 2 s (the default is 10 s).
    worker = Proc([BGJOBS, "worker", "--concurrency", "1", "--cancel-grace", "2s"], env,
                  tmp_path / "worker.log", cwd=EXAMPLE)
    try:
        wait_http(f"{origin}/", app)
        wait_until(lambda: "worker processes ready" in worker.output(), 20, "worker ready",
                   worker)
        yield Example(origin, app, worker)
    finally:
        app.stop()
        worker.stop()
        assert_no_tracebacks(app, worker)


@pytest.fixture
def served(example: Example) -> str:
    chromium()
    return example.origin


def client(origin: str) -> httpx.Client:
    """A browser-like client: it keeps the app's session cookie and sends the app's Origin."""
    return httpx.Client(base_url=origin, headers={"Origin": origin}, timeout=10)


def sign_in(client: httpx.Client, user: str) -> None:
    r = client.post("/login", json={"email": f"{user}@example.com", "password": user})
    assert r.status_code == 200, r.text


@pytest.mark.browser
def test_the_fastapi_example_follows_a_report_to_done(served: str) -> None:
    errors: list[str] = []
    with headless_chromium() as browser:
        page = browser.new_page()
        page.set_default_timeout(60_000)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{served}/")
        page.evaluate("""() => {
          window.bars = [];
          new MutationObserver(() => window.bars.push(
              document.getElementById("bar").getAttribute("aria-valuenow")))
            .observe(document.getElementById("bar"), {attributes: true,
                                                       attributeFilter: ["aria-valuenow"]});
        }""")
        page.fill("#email", "demo@example.com")
        page.fill("#password", "demo")
        page.click("#signin button")
        page.wait_for_selector("body[data-signed-in='true']")
        page.click("#start")
        page.wait_for_selector("body[data-status='complete']")
        bars = [int(b) for b in page.evaluate("window.bars")]
        assert bars[-1] == 100
        assert any(0 < b < 100 for b in bars), bars  # seen moving, not only at the end
        assert bars == sorted(bars)
    assert not errors


def test_a_user_cancels_a_running_report_that_another_user_cannot(example: Example) -> None:
    with client(example.origin) as demo, client(example.origin) as other:
        sign_in(demo, "demo")
        sign_in(other, "other")
        # Steps of 5 s (the most the example takes), reporting progress after each: a handler
        # that stopped only at its next progress would outlast the worker's 2 s grace.
        r = demo.post("/jobs", json={"type": "fastapi_report",
                                     "params": {"steps": 1000, "delay": 5}})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]

        def at_step(n: int) -> dict[str, Any] | None:
            job = demo.get(f"/jobs/{job_id}").json()
            step = job["progress"].get("current") or 0
            return job if job["status"] == "running" and step >= n else None

        wait_until(lambda: at_step(1), 20, "the report running", example.worker)
        # Another user's job is not theirs to see or cancel: a 404, and it runs on.
        refused = other.post(f"/jobs/{job_id}/cancel")
        assert refused.status_code == 404, refused.text
        assert refused.json()["error"]["code"] == "not_found"
        assert other.get(f"/jobs/{job_id}").status_code == 404
        # Cancelled just after a step, when its handler awaits the next 5 s sleep: only the
        # coroutine's cancellation stops it within the grace.
        wait_until(lambda: at_step(2), 20, "the next step, the job untouched", example.worker)
        r = demo.post(f"/jobs/{job_id}/cancel")
        assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
        wait_until(lambda: f"cancelled job {job_id} (fastapi_report, attempt 1/3): its handler "
                   "stopped after" in example.worker.output(), 10, "the coroutine cancelled",
                   example.worker)
        job = demo.get(f"/jobs/{job_id}").json()
        assert job["status"] == "cancelled" and job["progress"]["current"] == 2
    assert "ignored its cancellation" not in example.worker.output()
