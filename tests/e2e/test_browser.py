"""The dashboard in a real headless Chromium against real API, events and worker processes."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import httpx
import pytest

from bgjobs.core.store import Store
from tests.conftest import add_job, url_env
from tests.procs import BGJOBS, ROOT, Proc, assert_no_tracebacks, free_port, wait_until

if TYPE_CHECKING:
    from playwright.sync_api import Browser

pytestmark = pytest.mark.browser

ARTIFACTS = ROOT / "artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
# Records every change of each job's progress bar (aria-valuenow), per job id.
WATCH_BARS = """() => {
  window.bars = {};
  new MutationObserver((records) => {
    for (const r of records) {
      const card = r.target.closest("[data-job-id]");
      if (!card) continue;
      (window.bars[card.dataset.jobId] ||= []).push(r.target.getAttribute("aria-valuenow"));
    }
  }).observe(document.getElementById("jobs"),
             {subtree: true, attributes: true, attributeFilter: ["aria-valuenow"]});
}"""


def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        message = "chromium is not installed (apt-get install chromium; .ci/run does it in CI)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@contextmanager
def headless_chromium() -> Iterator[Browser]:
    """The system's Chromium (see chromium()) driven by Playwright, closed however the test ends."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS,
                                     headless=True)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Stack:
    api: str
    events_bind: str
    env: dict[str, str]
    procs: dict[str, Proc]
    tmp: Path

    def start_events(self) -> None:
        proc = Proc([BGJOBS, "events"], self.env, self.tmp / f"events{len(self.procs)}.log")
        self.procs[f"events{len(self.procs)}"] = proc
        self.procs["events"] = proc
        url = f"http://{self.events_bind}/events/healthz"
        wait_until(lambda: httpx.get(url, timeout=2).status_code == 200, 60, "events up", proc)


@pytest.fixture
def stack(db_url: str, tmp_path: Path) -> Iterator[Stack]:
    chromium()
    api_bind, events_bind = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    env = {**url_env(db_url), "BGJOBS_API_BIND": api_bind, "BGJOBS_EVENTS_BIND": events_bind,
           "BGJOBS_SECRET_KEY": "test", "BGJOBS_API_WORKERS": "2"}
    procs = {
        "api": Proc([BGJOBS, "api"], env, tmp_path / "api.log"),
        "worker": Proc([BGJOBS, "worker", "--concurrency", "2"], env, tmp_path / "worker.log"),
    }
    stack = Stack(f"http://{api_bind}", events_bind, env, procs, tmp_path)
    try:
        stack.start_events()
        wait_until(lambda: httpx.get(f"{stack.api}/healthz", timeout=2).status_code == 200, 60,
                   "api up", procs["api"])
        yield stack
    finally:
        for name, proc in procs.items():
            if name != "events":  # the same process as its numbered entry
                proc.stop()
        assert_no_tracebacks(procs["worker"])


def test_dashboard_shows_live_progress_cancels_and_never_polls(stack: Stack,
                                                              store: Store) -> None:
    user, token = store.create_user("browser")
    events_origin = f"http://{stack.events_bind}"
    requests: list[tuple[str, str]] = []
    errors: list[str] = []

    with headless_chromium() as browser:
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.set_default_timeout(60_000)
        page.on("request", lambda r: requests.append((r.method, r.url)))
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{stack.api}/")
        page.wait_for_selector("body[data-state='signed-out']")
        loaded = len(requests)

        page.fill("#token", token)
        page.click("#sign-in-form button[type=submit]")
        page.wait_for_selector("body[data-state='live']")
        assert page.text_content("#who") == user.name
        assert page.text_content("#conn") == "Live"
        page.evaluate(WATCH_BARS)

        # A demo job that finishes in seconds, and a long one to cancel while it runs.
        page.click("[data-start='demo']:not([data-params])")
        card = page.wait_for_selector(".job:has(.type:text-is('demo'))")
        quick = card.get_attribute("data-job-id")
        page.click("[data-start='demo'][data-params*='seconds']")
        card = page.wait_for_selector(f".job[data-job-id]:not([data-job-id='{quick}'])")
        long = card.get_attribute("data-job-id")

        page.wait_for_selector(f"[data-job-id='{long}'][data-status='running']")
        page.click(f"[data-job-id='{long}'] .cancel")
        page.wait_for_selector(f"[data-job-id='{long}'][data-status='cancelled']")

        done = page.wait_for_selector(
            f"[data-job-id='{quick}'][data-status='complete']", timeout=180_000)
        bars = page.evaluate("(id) => window.bars[id] || []", quick)
        assert len(set(bars)) >= 3, bars
        assert bars[-1] == "100"
        assert done.query_selector(".result dl"), "the result is shown"
        assert "steps" in (done.text_content() or "")

        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
        page.set_viewport_size({"width": 390, "height": 844})
        page.screenshot(path=str(ARTIFACTS / "dashboard-phone.png"), full_page=True)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"the page scrolls sideways at phone width ({width}px)"

        # After page load: only what the clicks caused, plus one event stream. No polling.
        after = requests[loaded:]
        api = [(m, urlsplit(u).path) for m, u in after if u.startswith(stack.api)]
        streams = [u for _, u in after if u.startswith(events_origin)]
        assert sorted(api) == sorted([
            ("POST", "/api/session"),  # sign in
            ("GET", "/api/jobs"),  # the list, read once when the stream opened
            ("POST", "/api/jobs"), ("POST", "/api/jobs"),  # start, start
            ("POST", f"/api/jobs/{long}/cancel"),  # cancel
        ]), after
        assert streams == [f"{events_origin}/events/jobs"], after
        assert len(after) == len(api) + len(streams), after

        # A blip: the events service restarts; the page says so, then recovers by itself.
        stack.procs["events"].stop()
        page.wait_for_selector("#conn[data-conn='reconnecting']")
        assert page.text_content("#conn") == "Reconnecting…"
        # Reloaded meanwhile: still signed in (cookie), and the jobs are listed anyway.
        page.reload()
        page.wait_for_selector(f"[data-job-id='{quick}'][data-status='complete']")
        page.wait_for_selector("#conn[data-conn='reconnecting']")
        stack.start_events()
        page.wait_for_selector("#conn[data-conn='live']")
        # A job started elsewhere (here: the store, as `bgjobs enqueue` would) shows up live.
        job = add_job(store, "noop", {"echo": "hi"}, user_id=user.id)
        page.wait_for_selector(f"[data-job-id='{job.id}'][data-status='complete']")
        # A job due in an hour says when it is due, not "waiting for a worker".
        later = add_job(store, "noop", user_id=user.id,
                        run_after=datetime.now(UTC) + timedelta(hours=1))
        stage = page.wait_for_selector(f"[data-job-id='{later.id}'][data-status='pending'] .stage")
        assert (stage.text_content() or "").startswith("scheduled for "), stage.text_content()
        due = page.evaluate("(iso) => new Date(iso).toLocaleString()", later.run_after.isoformat())
        assert stage.text_content() == f"scheduled for {due}"
        assert errors == []
