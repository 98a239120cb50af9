"""examples/seed_app end to end, in a database that already holds the app's users table:
`bgjobs migrate`, then the app's one command (gunicorn with 4 gthread workers, `bgjobs worker`,
`bgjobs events`), a heavy optimization job checked 300 times through the seed's progress route
from concurrent clients, and the app's page following it live in headless Chromium."""

from __future__ import annotations

import subprocess
from collections import defaultdict
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.conftest import url_env
from tests.e2e.test_browser import chromium, headless_chromium
from tests.integration.test_migrations import host_tables
from tests.procs import BGJOBS
from tests.seed_app_client import EXAMPLE, SeedClient, add_user, start

pytestmark = pytest.mark.browser

APP_TABLES = ("users", "activity")
HEAVY = {"generations": 200}  # far longer than the checks; cancelled at the end
# The generation a card's status text shows ("running · evolving 12/200" -> 12; else 0).
SHOWN = """(s) => Number((document.querySelector(s).textContent.match(/ (\\d+)\\/200$/)
                        || [0, 0])[1])"""


def test_the_seed_app_migrated_to_bgjobs(new_database, tmp_path: Path) -> None:
    chromium()
    url = new_database()
    with psycopg.connect(url, autocommit=True) as conn:  # the app's database, in use
        conn.execute((EXAMPLE / "schema.sql").read_text())
    add_user(url, "early@example.com", "early")
    before = host_tables(url, APP_TABLES)
    migrated = subprocess.run([BGJOBS, "migrate"], env=url_env(url), capture_output=True,
                              text=True, timeout=60)
    assert migrated.returncode == 0, migrated.stderr
    assert migrated.stdout.startswith("applied baseline/"), migrated.stdout
    assert host_tables(url, APP_TABLES) == before
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT confrelid::regclass::text FROM pg_constraint "
                            "WHERE conname = 'background_jobs_user_id_fkey'").fetchone() == (
            "users",)

    example = start(url, tmp_path / "example.log")
    try:
        run_the_app(example.base, url, tmp_path)
    except BaseException:
        print(example.proc.output()[-5000:])
        raise
    finally:
        example.proc.stop(timeout=60)


def run_the_app(base: str, url: str, tmp_path: Path) -> None:
    demo = SeedClient(base)
    add_user(url, "eve@example.com", "eve-password")
    eve = SeedClient(base, "eve@example.com", "eve-password")
    errors: list[str] = []
    with headless_chromium() as browser:
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.set_default_timeout(60_000)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{base}/")
        page.fill("input[name=email]", "demo@example.com")
        page.fill("input[name=password]", "demo")
        page.click("#login button[type=submit]")
        page.wait_for_selector("#conn[data-conn='live']")

        # A heavy job, started through the seed's route: the page picks it up live.
        job_id = demo.start("optimization", HEAVY)
        card = f".job[data-feature='optimization'][data-job-id='{job_id}']"
        page.wait_for_selector(f"{card}[data-status='running']")
        demo.wait_progress("optimization", job_id, "the job under way",
                           lambda p: p["status"] == "running" and p["progress"])
        page.wait_for_function(f"(s) => ({SHOWN})(s) >= 1", arg=f"{card} .status")
        first = page.evaluate(SHOWN, f"{card} .status")

        checks = demo.check_progress("optimization", job_id, clients=6, total=300)
        assert len(checks) == 300
        assert [c.status for c in checks if c.status != 200] == []  # 0 404s
        assert {c.body["job_id"] for c in checks} == {job_id}
        assert {c.body["status"] for c in checks} == {"running"}
        pids = {c.pid for c in checks}
        assert len(pids) >= 2, f"only worker {pids} answered"
        # Every answer is the row: one state per version, whichever process answered.
        states: dict[int, set[str]] = defaultdict(set)
        served: dict[int, set[int]] = defaultdict(set)
        for c in checks:
            states[c.body["version"]].add(repr((c.body["progress"], c.body["updated_at"])))
            served[c.body["version"]].add(c.pid)
        assert all(len(s) == 1 for s in states.values()), states
        assert max(len(p) for p in served.values()) >= 2, served
        print(f"progress checks: {len(checks)}, answered by pids {sorted(pids)}, "
              f"versions {sorted(states)}")

        # The exclusive types: a second active optimization or screening is refused.
        again = demo.post("/api/optimization/run", {})
        assert again.status_code == 409 and again.json()["job_id"] == job_id
        screening = demo.start("screening", {"stocks": 5000, "days": 2500})
        clash = demo.post("/api/screening/run", {})
        assert clash.status_code == 409 and clash.json()["job_id"] == screening
        assert demo.post(f"/api/screening/cancel/{screening}").status_code == 200
        # Another page (another port of this host: the same site) cannot start or cancel a
        # job with the user's cookie, and no form post starts one.
        other_page = "http://127.0.0.1:9999"
        assert demo.post("/api/rescoring/run", {}, origin=other_page).status_code == 403
        assert demo.post(f"/api/optimization/cancel/{job_id}",
                         origin=other_page).status_code == 403
        form = httpx.post(f"{base}/api/rescoring/run", data={"x": "1"}, cookies=demo.cookies,
                          headers={"Origin": base}, timeout=30)
        assert form.status_code == 415, form.text
        # Another user's job does not exist for them, however it is asked for.
        for path in (f"/api/optimization/progress/{job_id}",
                     f"/api/rescoring/progress/{job_id}", f"/jobs/{job_id}"):
            assert eve.get(path).status_code == 404, path
        assert eve.post(f"/api/optimization/cancel/{job_id}").status_code == 404
        assert demo.get(f"/api/rescoring/progress/{job_id}").status_code == 404

        # The page starts a job of its own and shows it to the end.
        page.click(".job[data-feature='screening'] .start")
        page.wait_for_selector(".job[data-feature='screening'][data-status='complete']",
                               timeout=120_000)
        assert "screened" in (page.text_content(
            ".job[data-feature='screening'] .result") or "")

        # Live: the card moves on by itself (no polling), then the page cancels the job.
        page.wait_for_function(f"(s) => ({SHOWN})(s) > {first}", arg=f"{card} .status",
                               timeout=180_000)
        assert page.get_attribute(f"{card} progress", "aria-valuenow") is not None
        page.click(f"{card} .cancel")
        page.wait_for_selector(f"{card}[data-status='cancelled']")
        assert demo.progress("optimization", job_id)["status"] == "cancelled"
        # The pipeline: validate, then optimise, then rescore, one workflow; one bar for all.
        page.click("#pipeline .start")
        page.wait_for_selector("#pipeline[data-status='running']", timeout=60_000)
        page.wait_for_selector("#pipeline[data-status='complete']", timeout=180_000)
        assert page.get_attribute("#pipeline progress", "aria-valuenow") == "100"
        assert page.text_content("#pipeline .status") == "3 of 3 steps done"
        workflow = page.get_attribute("#pipeline", "data-workflow-id")
        steps = demo.get(f"/api/pipeline/{workflow}").json()["jobs"]
        assert [j["type"] for j in sorted(steps, key=lambda j: j["started_at"])] == [
            "validation", "optimization", "rescoring"]
        assert all(a["finished_at"] <= b["started_at"] for a, b in zip(
            sorted(steps, key=lambda j: j["started_at"]),
            sorted(steps, key=lambda j: j["started_at"])[1:], strict=False))
        page.screenshot(path=str(tmp_path / "seed_app.png"), full_page=True)
        assert errors == []
    with psycopg.connect(url) as conn:
        actions = [r[0] for r in conn.execute("SELECT action FROM activity ORDER BY id")]
    assert actions[:2] == ["start optimization", "start screening"], actions
    assert "start rescoring" not in actions, actions
