"""examples/fastapi_app as its README runs it (gunicorn's asgi worker, a bgjobs worker): headless
Chromium signs in with the app's own users table, starts a report, and follows its progress bar
to done through the event stream mounted in the app (bgjobs.asgi)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import url_env
from tests.e2e.test_browser import chromium, headless_chromium
from tests.procs import BGJOBS, ROOT, Proc, assert_no_tracebacks, free_port, wait_http

pytestmark = pytest.mark.browser

EXAMPLE = ROOT / "examples" / "fastapi_app"
GUNICORN = str(Path(sys.executable).parent / "gunicorn")


@pytest.fixture
def served(host_db_url: str, tmp_path: Path) -> Iterator[str]:
    chromium()
    env = {**url_env(host_db_url), "BGJOBS_TASK_MODULES": "jobs", "PYTHONPATH": str(EXAMPLE),
           "SECRET_KEY": "e2e"}
    setup = subprocess.run([sys.executable, "app.py", "setup", "demo@example.com", "demo"],
                           env=env, cwd=EXAMPLE, capture_output=True, text=True, timeout=60)
    assert setup.returncode == 0, setup.stderr
    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    app = Proc([GUNICORN, "-k", "asgi", "-b", f"127.0.0.1:{port}", "app:app"], env,
               tmp_path / "app.log", cwd=EXAMPLE)
    worker = Proc([BGJOBS, "worker", "--concurrency", "1"], env, tmp_path / "worker.log",
                  cwd=EXAMPLE)
    try:
        wait_http(f"{origin}/", app)
        yield origin
    finally:
        app.stop()
        worker.stop()
        assert_no_tracebacks(app, worker)


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
