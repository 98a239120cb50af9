"""The operator view in a real headless Chromium: admins only, live, with a drawn chart."""

from __future__ import annotations

import struct
from datetime import UTC, datetime
from urllib.parse import urlsplit

import psycopg
import pytest

from bgjobs.core.store import Store
from tests.conftest import add_job
from tests.e2e import test_browser as tb

pytestmark = pytest.mark.browser
stack = tb.stack  # the same fixture: real API, events and worker processes

# Pixels of each series' colour on the chart's canvas: proof that lines were drawn.
SERIES_PIXELS = """() => {
  const c = document.getElementById("admin-chart");
  const data = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  const want = {started: [47, 111, 237], completed: [27, 138, 75], failed: [192, 54, 44]};
  const found = {started: 0, completed: 0, failed: 0};
  for (let i = 0; i < data.length; i += 4) {
    for (const [name, [r, g, b]] of Object.entries(want)) {
      if (Math.abs(data[i] - r) < 12 && Math.abs(data[i + 1] - g) < 12
          && Math.abs(data[i + 2] - b) < 12 && data[i + 3] > 200) found[name] += 1;
    }
  }
  return found;
}"""


def png_size(path) -> tuple[int, int]:
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", "a PNG"
    return struct.unpack(">II", head[16:24])


def sign_in(page, token: str) -> None:
    page.fill("#token", token)
    page.click("#sign-in-form button[type=submit]")
    page.wait_for_selector("body[data-state='live']")


def test_operator_view_for_admins_and_nothing_for_others(stack: tb.Stack, store: Store,
                                                        db_url: str) -> None:
    alice, alice_token = store.create_user("alice")
    _, root_token = store.create_user("root", is_admin=True)
    with psycopg.connect(db_url, autocommit=True) as c:
        # An hour of history: finished jobs in the last minutes, of two users.
        c.execute("INSERT INTO background_jobs (job_type, user_id, status, created_at, "
                  "started_at, finished_at) SELECT 'noop', %s, "
                  "CASE WHEN n %% 5 = 0 THEN 'error' ELSE 'complete' END, "
                  "now() - n * interval '40 seconds', now() - n * interval '40 seconds', "
                  "now() - n * interval '40 seconds' + interval '1 second' "
                  "FROM generate_series(1, 60) AS n", (alice.id,))
        c.execute("INSERT INTO bgjobs_schedules (name, job_type, cron, params) "
                  "VALUES ('nightly-echo', 'noop', '0 2 * * *', '{\"echo\": \"tick\"}')")
    waiting = add_job(store, "noop", {"echo": "later"}, user_id=alice.id,
                      run_after=datetime(2099, 1, 1, tzinfo=UTC))
    requests: list[str] = []
    errors: list[str] = []
    tb.ARTIFACTS.mkdir(exist_ok=True)

    with tb.headless_chromium() as browser:
        # A non-admin: no tab, no operator view, no admin script, no admin request.
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.set_default_timeout(60_000)
        page.on("request", lambda r: requests.append(r.url))
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{stack.api}/")
        sign_in(page, alice_token)
        page.wait_for_selector(f"[data-job-id='{waiting.id}']")
        assert page.query_selector("#tabs") is None and page.query_selector("#admin") is None
        assert not [u for u in requests if "admin" in urlsplit(u).path], requests
        assert page.evaluate("typeof window.bgjobsAdmin") == "undefined"
        page.close()

        # An admin. (wait_for_function below evaluates its predicate inside the page, which
        # the dashboard's CSP, no eval, refuses: this page bypasses it. The operator view
        # under the real CSP: test_browser_hostile.py.)
        requests.clear()
        page = browser.new_page(viewport={"width": 1200, "height": 900}, bypass_csp=True)
        page.set_default_timeout(60_000)
        page.on("request", lambda r: requests.append(r.url))
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{stack.api}/")
        sign_in(page, root_token)
        page.click("#tabs [data-view='admin']")
        page.wait_for_selector("body[data-admin='live']")
        assert page.is_visible("#admin") and not page.is_visible("#app")
        for selector in ("#admin-chart", "#admin-counts", "#admin-workers", "#admin-stuck",
                         "#admin-schedules", "#admin-jobs", "#admin-filters"):
            assert page.is_visible(selector), selector
        assert page.text_content("#admin-depth") == "1"
        page.wait_for_selector("#admin-workers tr.alive")  # the stack's worker heartbeats
        counts = page.inner_text("#admin-counts")
        assert "noop" in counts and "48" in counts and "12" in counts, counts
        assert int(page.get_attribute("#admin-chart", "data-total")) == 60 + 48 + 12
        drawn = page.evaluate(SERIES_PIXELS)
        assert all(n > 20 for n in drawn.values()), drawn
        rows = page.query_selector_all("#admin-jobs tbody tr")
        assert len(rows) == 50 and page.is_visible("#admin-more")  # a page of 50 of 61
        page.click("#admin-more")
        page.wait_for_function(
            "document.querySelectorAll('#admin-jobs tbody tr').length === 61")

        # Live: run the schedule now; its job appears, runs and completes by the stream,
        # and the chart moves with it.
        before = int(page.get_attribute("#admin-chart", "data-total"))
        page.click("#admin-schedules [data-schedule='nightly-echo']")
        page.wait_for_selector("#admin-jobs tbody tr[data-status='complete']:first-child")
        page.wait_for_function(
            f"Number(document.getElementById('admin-chart').dataset.total) >= {before + 2}")
        # A job whose states reach the stream in one burst (made and cancelled in one
        # transaction): the stream sends only its latest state, and the view lists it anyway.
        with psycopg.connect(db_url) as c:
            (burst,) = c.execute("INSERT INTO background_jobs (job_type, user_id) "
                                 "VALUES ('noop', %s) RETURNING id", (alice.id,)).fetchone()
            c.execute("UPDATE background_jobs SET status = 'cancelled' WHERE id = %s", (burst,))
        page.wait_for_selector(f"#admin-jobs tbody tr[data-job-id='{burst}']"
                               "[data-status='cancelled']:first-child")
        # Cancel alice's waiting job from the operator view.
        page.click(f"#admin-jobs tr[data-job-id='{waiting.id}'] button.cancel")
        page.wait_for_selector(f"#admin-jobs tr[data-job-id='{waiting.id}']"
                               "[data-status='cancelled']")
        assert store.get_job(waiting.id).status == "cancelled"
        # Filters: one user's errors.
        page.select_option("#admin-filters select[name='status']", "error")
        page.fill("#admin-filters input[name='user']", "alice")
        page.click("#admin-filters button[type=submit]")
        page.wait_for_function(
            "document.querySelectorAll('#admin-jobs tbody tr').length === 12")
        assert set(page.eval_on_selector_all(
            "#admin-jobs tbody tr", "rows => rows.map(r => r.dataset.status)")) == {"error"}

        path = tb.ARTIFACTS / "operator.png"
        page.screenshot(path=str(path), full_page=True)
        width, height = png_size(path)
        assert width == 1200 and height > 900  # the whole view, below the fold too
        chart = page.query_selector("#admin-chart").screenshot()
        assert len(chart) > 2000  # lines and labels, not a blank box
        streams = [u for u in requests if urlsplit(u).path == "/events/admin/jobs"]
        assert len(streams) == 1, requests  # one stream, no polling
        assert errors == []
