"""A signed-in Chromium against hostile pages on another port of the same host, and a dashboard
whose job goes back to an older version: what the browser can be made to do, and what it shows."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import psycopg
import pytest

from bgjobs.core.store import Store
from tests.conftest import add_job
from tests.e2e.test_browser import Stack, headless_chromium, stack  # noqa: F401
from tests.integration.test_events_versions import restore
from tests.procs import free_port

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.browser

# Every policy violation the page reports (a CSP that broke the dashboard would show here).
WATCH_CSP = """document.addEventListener("securitypolicyviolation",
  (e) => (window.cspViolations ||= []).push(e.violatedDirective + " " + e.blockedURI));"""


def attacker_pages(api: str, job_id: str) -> dict[str, str]:
    """Pages a same-site attacker serves: auto-submitting forms, no-cors fetches, a frame."""
    def form(action: str, fields: str = "", enctype: str = "") -> str:
        return (f'<form method="post" action="{api}{action}" {enctype}>{fields}</form>'
                "<script>document.forms[0].submit()</script>")

    return {
        "/run-empty.html": form("/api/jobs"),
        "/run-form.html": form("/api/jobs", '<input name="type" value="noop">'),
        "/json-as-text.html": form("/api/jobs",
                                   '<input name=\'{"type": "noop", "x": "\' value=\'"}\'>',
                                   'enctype="text/plain"'),
        "/cancel.html": form(f"/api/jobs/{job_id}/cancel"),
        "/sign-out.html": "<script>fetch('" + api + "/api/session', {method: 'DELETE', "
                          "credentials: 'include', mode: 'no-cors'})"
                          ".finally(() => document.title = 'sent')</script>",
        "/fetch.html": "<script>Promise.allSettled(["
                       f"fetch('{api}/api/jobs', {{method: 'POST', mode: 'no-cors', "
                       "credentials: 'include', headers: {'Content-Type': 'text/plain'}, "
                       "body: JSON.stringify({type: 'noop'})}),"
                       f"fetch('{api}/api/jobs/{job_id}/cancel', {{method: 'POST', "
                       "mode: 'no-cors', credentials: 'include'})"
                       "]).then(() => document.title = 'sent')</script>",
        "/frame.html": f'<iframe id="f" src="{api}/" onload="this.dataset.loaded = 1" '
                       'width="800" height="600"></iframe>',
    }


@pytest.fixture
def attacker(stack: Stack) -> Iterator[tuple[str, dict[str, str]]]:  # noqa: F811
    """An HTTP server on another port of 127.0.0.1; pages are filled in by the test."""
    pages: dict[str, str] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            body = pages.get(self.path, "not here").encode()
            self.send_response(200 if self.path in pages else 404)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", pages
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def signed_in(stack: Stack, token: str) -> Iterator[Page]:  # noqa: F811
    """A headless Chromium page on the dashboard, signed in with ``token``, its stream live."""
    with headless_chromium() as browser:
        page = browser.new_page()
        page.set_default_timeout(60_000)
        page.add_init_script(WATCH_CSP)
        page.goto(f"{stack.api}/")
        page.fill("#token", token)
        page.click("#sign-in-form button[type=submit]")
        page.wait_for_selector("body[data-state='live']")
        yield page


def _rows(url: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT id, status, version FROM background_jobs ORDER BY id"
                            ).fetchall()


def test_a_same_site_page_on_another_port_cannot_create_or_cancel_jobs(
        stack: Stack, attacker: tuple[str, dict[str, str]], store: Store,  # noqa: F811
        db_url: str) -> None:
    user, token = store.create_user("victim")
    later = datetime.now(UTC) + timedelta(days=365)  # no worker touches it
    job = add_job(store, "noop", {"echo": "keep"}, user_id=user.id, run_after=later)
    origin, pages = attacker
    pages.update(attacker_pages(stack.api, str(job.id)))

    with signed_in(stack, token) as page:
        page.wait_for_selector(f"[data-job-id='{job.id}'][data-status='pending']")
        assert page.evaluate("window.cspViolations || []") == []
        before = _rows(db_url)

        # Each form lands on the API's answer: the JSON error, not a job. The cookie was
        # sent (the answers are not 401): the Origin check stopped them (without it, the
        # forms creating jobs would still get a 415 for their content type; see
        # test_api_bad_input.py).
        for path in ("/run-empty.html", "/run-form.html", "/json-as-text.html",
                     "/cancel.html"):
            page.goto(f"{origin}{path}")
            page.wait_for_url(f"{stack.api}/api/**")
            answer = json.loads(page.inner_text("body"))
            assert answer["error"]["code"] == "forbidden", (path, answer)
            assert origin in answer["error"]["message"]
        for path in ("/fetch.html", "/sign-out.html"):
            page.goto(f"{origin}{path}")
            page.wait_for_function("document.title === 'sent'")
        assert _rows(db_url) == before

        # The dashboard cannot be framed by that page either.
        page.goto(f"{origin}/frame.html")
        page.wait_for_selector("#f[data-loaded]", state="attached")
        assert page.frame_locator("#f").locator("#sign-in-form").count() == 0

        # Still signed in (the cross-site sign-out was refused), and the page still works.
        page.goto(f"{stack.api}/")
        page.wait_for_selector("body[data-state='live']")
        page.click(f"[data-job-id='{job.id}'] .cancel")
        page.wait_for_selector(f"[data-job-id='{job.id}'][data-status='cancelled']")
        assert page.evaluate("window.cspViolations || []") == []


def test_the_dashboard_follows_a_job_whose_version_went_back(
        stack: Stack, store: Store, db_url: str) -> None:  # noqa: F811
    user, token = store.create_user("restored")
    later = datetime.now(UTC) + timedelta(days=365)
    job = add_job(store, "noop", user_id=user.id, run_after=later)

    with signed_in(stack, token) as page:
        card = f"[data-job-id='{job.id}']"
        page.wait_for_selector(f"{card}[data-status='pending']")
        with psycopg.connect(db_url, autocommit=True) as conn:
            for step in range(1, 6):  # versions 2 to 6
                conn.execute("UPDATE background_jobs SET progress = %s WHERE id = %s",
                             [json.dumps({"current": step, "total": 5}), job.id])
        page.wait_for_selector(f"{card} .count:text-is('5 / 5')")

        # The database goes back to an older copy in which the job had already finished.
        restore(db_url, job, 2, "complete", {"current": 5, "total": 5})
        page.wait_for_selector(f"{card}[data-status='complete']")

        # And after a reload (a reconnect), the list shows the same.
        page.reload()
        page.wait_for_selector(f"{card}[data-status='complete']")


def test_the_operator_view_runs_under_the_content_security_policy(
        stack: Stack, store: Store) -> None:  # noqa: F811
    _, token = store.create_user("root", is_admin=True)
    with signed_in(stack, token) as page:
        page.click("#tabs [data-view='admin']")
        page.wait_for_selector("body[data-admin='live']")
        page.wait_for_selector("#admin-chart")
        assert page.evaluate("window.cspViolations || []") == []
