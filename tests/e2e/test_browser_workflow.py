"""A workflow in the dashboard, in headless Chromium: its graph fills in live from its own
stream, GET /events/workflows/<id>."""

from __future__ import annotations

import pytest

from bgjobs.core.store import Store
from tests.e2e.test_browser import Stack, headless_chromium, stack  # noqa: F401 (fixture)

pytestmark = pytest.mark.browser


def test_a_workflow_is_drawn_as_a_graph_that_fills_in_live(stack: Stack,  # noqa: F811
                                                           store: Store, tmp_path) -> None:
    user, token = store.create_user("flow")
    errors: list[str] = []
    with headless_chromium() as browser:
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.set_default_timeout(60_000)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        requests: list[str] = []
        page.on("request", lambda request: requests.append(request.url))
        page.goto(f"{stack.api}/")
        page.wait_for_selector("body[data-state='signed-out']")
        page.fill("#token", token)
        page.click("#sign-in-form button[type=submit]")
        page.wait_for_selector("body[data-state='live']")
        # Record every state each node of the graph shows, to see it fill in. Its three steps
        # are demo jobs: each is named by its column, first, second, third.
        page.evaluate("""() => {
          window.seen = [];
          window.summaries = [];
          const steps = ['first', 'second', 'third'];
          new MutationObserver(() => {
            const cols = [...document.querySelectorAll('#workflow .wf-col')];
            for (const n of document.querySelectorAll('#workflow .wf-node')) {
              const step = steps[cols.indexOf(n.closest('.wf-col'))];
              window.seen.push(step + ':' + n.dataset.status);
            }
            const text = document.querySelector('#workflow .wf-summary').textContent;
            if (text && window.summaries.at(-1) !== text) window.summaries.push(text);
          }).observe(document.getElementById('workflow'), {subtree: true, childList: true,
                                                          attributes: true});
        }""")
        page.click("#start-workflow")
        page.wait_for_selector("#workflow:not([hidden]) .wf-node")
        # Three levels, one job each, joined by two edges.
        assert page.locator("#workflow .wf-col").count() == 3
        assert page.locator("#workflow .wf-edges line").count() == 2
        assert page.text_content("#workflow .wf-col:nth-of-type(1) .type") == "demo"
        workflow_id = page.get_attribute("#workflow", "data-workflow-id")
        page.wait_for_selector("#workflow[data-status='complete']", timeout=180_000)
        assert page.text_content("#workflow .wf-summary") == "3 of 3 done"
        # The workflow's own stream drew it, summaries included, and it ended with it: no
        # read of the workflow from the API, no polling.
        page.wait_for_selector("#workflow[data-stream='ended']")
        assert [u for u in requests if u.endswith(f"/events/workflows/{workflow_id}")], requests
        assert not [u for u in requests if "/api/jobs/workflows/" in u], requests
        summaries = page.evaluate("window.summaries")
        # Each summary event counted more jobs done (the first job may be done by the time
        # the stream opens).
        done = [int(text.split(" of ")[0]) for text in summaries]
        assert len(done) >= 3 and done == sorted(set(done)) and done[-1] == 3, summaries
        seen = page.evaluate("window.seen")
        # Live: the last step was shown waiting, then running, then complete.
        for state in ("third:pending", "third:running", "third:complete"):
            assert state in seen, (state, sorted(set(seen)))
        assert seen.index("third:running") > seen.index("second:complete")
        # A job's card links to its workflow.
        page.click("#close-workflow")
        assert page.is_hidden("#workflow")
        page.click(".job .show-workflow >> nth=0")
        page.wait_for_selector("#workflow:not([hidden]) .wf-node[data-status='complete']")
        page.screenshot(path=str(tmp_path / "workflow.png"), full_page=True)
        page.screenshot(path="/tmp/workflow.png", full_page=True)
    assert errors == []
