"""A Flask app of the tests' own (not the example) embeds bgjobs with nothing but ``BgJobs``,
``stream_url`` and ``bgjobs.enqueue``: it runs a job, and headless Chromium follows its progress
through the events service, across an events restart while the stream token is valid (the same
URL reconnects) and one after it expired (the page renews the URL)."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import psycopg
import pytest
from flask import Flask, jsonify, redirect, session
from werkzeug.serving import make_server

import bgjobs
import tests.task_fixtures  # noqa: F401 - the app's job types (its workers import them too)
from bgjobs.flask import BgJobs
from bgjobs.server import stream_tokens
from tests.conftest import add_host_user, doc_code, url_env, wait_for
from tests.e2e.test_browser import chromium, headless_chromium
from tests.procs import BGJOBS, Proc, assert_no_tracebacks, free_port, wait_until

pytestmark = pytest.mark.browser

SECRET = "host-app-stream-secret"
TOKEN_SECONDS = 20

def doc_follow(**constants: int) -> str:
    """docs/flask.md's ``follow()`` as the doc shows it (under this app's prefix, /bg), with
    its renewal ``constants`` changed if given."""
    js = doc_code("flask.md", "### In the page, with renewal", "js")
    assert js.count("`/jobs/${jobId}/stream-url`") == 1, js
    js = js.replace("`/jobs/${jobId}/stream-url`", "`/bg/${jobId}/stream-url`")
    for name, value in constants.items():
        js, found = re.subn(rf"\b{name} = \d+", f"{name} = {value}", js)
        assert found == 1, name
    return js


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Reports</title></head>
<body data-status="none">
<button id="start">Make the report</button>
<progress id="bar" max="100" value="0"></progress> <span id="status"></span>
<script>
// The doc's code, watched: each stream URL it opens (and when), each stream that opened.
window.urls = []; window.urlTimes = []; window.opens = 0;
window.EventSource = class extends EventSource {
  constructor(url, init) {
    super(url, init);
    window.urls.push(url);
    window.urlTimes.push(performance.now());
    this.addEventListener("open", () => { window.opens += 1; });
  }
};
</script>
<script>%(follow)s</script>
<script>
function render(job) {
  const { current = 0, total = 1 } = job.progress || {};
  document.getElementById("bar").value = Math.round((100 * current) / total);
  document.getElementById("status").textContent = job.status;
  document.body.dataset.status = job.status;
  document.body.dataset.percent = String(Math.round((100 * current) / total));
}
function showError(message) {
  document.getElementById("status").textContent = message;
  document.body.dataset.error = message;
}
document.getElementById("start").onclick = async () => {
  const answer = await fetch("/reports", { method: "POST" });
  const body = await answer.json();
  document.body.dataset.jobId = body.job_id;
  follow(body.job_id, body.stream_url, render, showError);
};
</script></body></html>"""


def reports_app(url: str, events_base: str, gate: Path, secret: str = SECRET,
                follow: str | None = None) -> Flask:
    """Someone's app: its own users table and sign-in, bgjobs under /bg; its page follows a
    job with ``follow`` (docs/flask.md's, by default) and signs stream URLs with ``secret``."""
    page = PAGE.replace("%(follow)s", follow or doc_follow())
    app = Flask("reports")
    app.config.update(SECRET_KEY="reports-app", BGJOBS_DATABASE_URL=url,
                      BGJOBS_SECRET_KEY=secret, BGJOBS_EVENTS_URL=events_base,
                      BGJOBS_STREAM_TOKEN_SECONDS=TOKEN_SECONDS)
    jobs = BgJobs(app, current_user_id=lambda: session.get("uid"), url_prefix="/bg")

    @app.get("/sign-in/<int:uid>")
    def sign_in(uid: int):
        session["uid"] = uid
        return redirect("/")

    @app.get("/")
    def index():
        return page

    @app.post("/reports")
    def start_report():
        with psycopg.connect(url) as conn:  # the app's transaction
            job = bgjobs.enqueue("gated", {"steps": 10, "gate": str(gate)},
                                 user_id=session["uid"], conn=conn)
        return jsonify({"job_id": str(job.id), "stream_url": jobs.stream_url(job.id)}), 202

    return app


class Events:
    """`bgjobs events` on a fixed port, restartable."""

    def __init__(self, url: str, app_origin: str, tmp: Path) -> None:
        self.bind = f"127.0.0.1:{free_port()}"
        self.env = {**url_env(url), "BGJOBS_EVENTS_BIND": self.bind, "BGJOBS_SECRET_KEY": SECRET,
                    "BGJOBS_CORS_ORIGINS": app_origin}
        self.tmp, self.proc, self.starts = tmp, None, 0
        self.start()

    def start(self) -> None:
        import httpx

        self.starts += 1
        self.proc = Proc([BGJOBS, "events"], self.env, self.tmp / f"events{self.starts}.log")
        wait_until(lambda: httpx.get(f"http://{self.bind}/events/healthz", timeout=2)
                   .status_code == 200, 60, "events up", self.proc)

    def restart(self) -> None:
        assert self.proc is not None
        self.proc.stop()
        self.start()


@pytest.fixture
def served(host_db_url: str, tmp_path: Path,
           request: pytest.FixtureRequest) -> Iterator[tuple[str, Events, Path]]:
    """The app, its worker and the events service; ``request.param`` (indirect): the app's
    ``reports_app`` keywords."""
    chromium()
    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    events = Events(host_db_url, origin, tmp_path)
    worker = Proc([BGJOBS, "worker", "--concurrency", "1"],
                  {**url_env(host_db_url), "BGJOBS_TASK_MODULES": "tests.task_fixtures"},
                  tmp_path / "worker.log")
    gate = tmp_path / "gate"
    app = reports_app(host_db_url, f"http://{events.bind}", gate,
                      **getattr(request, "param", {}))
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield origin, events, gate
    finally:
        server.shutdown()
        BgJobs.close(app)
        worker.stop()
        assert_no_tracebacks(worker)
        assert events.proc is not None
        events.proc.stop()


def expiry(url: str) -> int:
    token = parse_qs(urlsplit(url).query)["token"][0]
    return stream_tokens.verify(SECRET, token, now=0).expires_at


@contextmanager
def started_report(origin: str, host_db_url: str, errors: list[str]) -> Iterator[Any]:
    """A signed-in user's page in headless Chromium, the report just started (page errors go
    to ``errors``)."""
    uid = add_host_user(host_db_url, "reporter@example.com")
    with headless_chromium() as browser:
        page = browser.new_page()
        page.set_default_timeout(60_000)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{origin}/sign-in/{uid}")
        page.click("#start")
        yield page


def test_someone_elses_flask_app_follows_a_job_live(served, host_db_url: str) -> None:
    origin, events, gate = served
    errors: list[str] = []
    with started_report(origin, host_db_url, errors) as page:
        page.wait_for_selector("body[data-status='running'][data-percent='50']")
        (first,) = page.evaluate("window.urls")
        assert first.startswith(f"http://{events.bind}/events/jobs/")

        # The events service restarts while the token is valid: the browser reconnects
        # to the same URL by itself.
        events.restart()
        page.wait_for_function("window.opens >= 2")
        if time.time() < expiry(first):  # the restart took less than TOKEN_SECONDS
            assert page.evaluate("window.urls") == [first]

        # Once the token has expired, a reconnect is refused; the page renews the URL.
        wait_for(lambda: time.time() > expiry(first) + 1, timeout=TOKEN_SECONDS + 30,
                 message="the stream token to expire")
        events.restart()
        page.wait_for_function("window.urls.length >= 2 && window.opens >= 3")
        renewed = page.evaluate("window.urls")[-1]
        assert renewed != first and expiry(renewed) > expiry(first)

        gate.touch()
        page.wait_for_selector("body[data-status='complete'][data-percent='100']")
        assert page.evaluate("document.getElementById('bar').value") == 100
        assert errors == []
    with psycopg.connect(host_db_url) as conn:
        assert conn.execute("SELECT count(*) FROM bgjobs_users").fetchone() == (0,)
        assert conn.execute("SELECT u.email, j.status FROM background_jobs j "
                            "JOIN users u ON u.id = j.user_id").fetchall() == [
            ("reporter@example.com", "complete")]


FAST_RENEWAL = {"RENEW_FIRST_MS": 100, "RENEW_MAX_MS": 400, "RENEW_TRIES": 5}


@pytest.mark.parametrize("served", [{"secret": "not the events service's key",
                                     "follow": doc_follow(**FAST_RENEWAL)}], indirect=True)
def test_a_page_whose_fresh_stream_urls_are_refused_backs_off_then_gives_up(
        served, host_db_url: str) -> None:
    origin, events, gate = served
    errors: list[str] = []
    with started_report(origin, host_db_url, errors) as page:
        page.wait_for_selector("body[data-error]")
        assert "refuses" in page.text_content("#status")
        urls, times = page.evaluate("[window.urls, window.urlTimes]")
        # The first URL, then RENEW_TRIES fresh ones, each after a longer pause (to the cap).
        assert len(urls) == 1 + FAST_RENEWAL["RENEW_TRIES"]  # (one second's tokens are equal)
        assert page.evaluate("window.opens") == 0
        pauses = [min(100 * 2 ** n, 400) for n in range(FAST_RENEWAL["RENEW_TRIES"])]
        gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
        assert all(gap >= pause - 5 for gap, pause in zip(gaps, pauses, strict=True)), gaps
        page.wait_for_timeout(1500)  # longer than the longest pause: no more renewals
        assert len(page.evaluate("window.urls")) == len(urls)
        assert errors == []
    gate.touch()
    # The events service's log says why, as the page cannot.
    assert "the app and the events service must share it" in events.proc.output()
