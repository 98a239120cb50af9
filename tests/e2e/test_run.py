"""`bgjobs run`, as `make run` starts it on a fresh machine: no DATABASE_URL, a data folder of
its own. The embedded Postgres comes up, the migrations run, the demo token works, the API and
the events service answer, a job goes through a worker to the dashboard's stream, and Ctrl-C
(SIGINT to the terminal's foreground group) stops every process it started, its Postgres too.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from bgjobs.core import embedded, migrate
from bgjobs.server.auth import SESSION_COOKIE
from tests.e2e.test_events_service import Reader, auth
from tests.procs import BGJOBS, Proc, descendants, free_port, wait_until


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Not under pytest's temp root, which a concurrent session may close to 0700 (conftest).
    path = Path(tempfile.mkdtemp(prefix="bgjobs-test-run-"))
    yield path
    cluster = embedded.Cluster(path)
    if (cluster.pgdata / "PG_VERSION").exists() and cluster.is_running():
        cluster.stop("immediate")  # only when the test failed before Ctrl-C
    shutil.rmtree(path, ignore_errors=True)


def test_bgjobs_run_brings_everything_up_and_ctrl_c_stops_it_all(data_dir: Path,
                                                                  tmp_path: Path) -> None:
    api, events = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    env = {**os.environ, "BGJOBS_DATA_DIR": str(data_dir), "BGJOBS_API_BIND": api,
           "BGJOBS_EVENTS_BIND": events, "BGJOBS_API_WORKERS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("DATABASE_URL", None)
    env.pop("BGJOBS_PG_BIN", None)  # the default: bgjobs[embedded]'s Postgres
    run = Proc([BGJOBS, "run"], env, tmp_path / "run.log")  # a group of its own, as a terminal
    try:
        wait_until(lambda: "Ctrl-C stops everything" in run.output(), 120, "the banner", run)
        banner = run.output()
        token = re.search(r"demo user's token: (\S+)", banner).group(1)
        assert (data_dir / "demo_token").read_text().strip() == token

        cluster = embedded.Cluster(data_dir)
        assert cluster.is_running()
        with psycopg.connect(cluster.url()) as conn:
            server = conn.info.server_version // 10000
            applied = conn.execute("SELECT max(version) FROM bgjobs_migrations").fetchone()[0]
        assert server == embedded.major(embedded.candidates()[0])  # the wheel's Postgres
        assert applied == migrate.discover()[-1].version

        for url in (f"http://{api}/healthz", f"http://{events}/events/healthz"):
            wait_until(lambda u=url: httpx.get(u, timeout=2).status_code == 200, 60, url, run)
        assert httpx.get(f"http://{api}/", timeout=5).status_code == 200  # the dashboard

        # The dashboard: sign in with the token, then one stream of the user's jobs.
        signed_in = httpx.post(f"http://{api}/api/session", json={"token": token}, timeout=10)
        assert signed_in.status_code == 200, signed_in.text
        cookie = {"Cookie": f"{SESSION_COOKIE}={signed_in.cookies[SESSION_COOKIE]}"}
        reader = Reader(f"http://{events}/events/jobs", cookie)
        wait_until(lambda: reader.status is not None, 20, "the stream's answer")
        assert reader.status == 200

        made = httpx.post(f"http://{api}/api/jobs", headers=auth(token), timeout=10,
                          json={"type": "noop", "params": {"echo": "run"}})
        assert made.status_code == 202, made.text
        job_id = made.json()["id"]
        done = reader.wait_for(lambda j: j["id"] == job_id and j["status"] == "complete",
                               "the job complete on the dashboard's stream", timeout=60)
        assert done["data"]["result"] == {"echo": "run"}
        reader.close()

        started = descendants(run.pid)
        assert len(started) >= 6, started  # api, events, workers, each with children
        postmaster = int((cluster.pgdata / "postmaster.pid").read_text().split()[0])

        os.killpg(run.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends
        assert run.popen.wait(60) == 0, run.output()[-3000:]
        wait_until(lambda: not any(alive(pid) for pid in started), 30,
                   "every process `bgjobs run` started to exit")
        assert not alive(postmaster)
        # It started the cluster, so it stopped it (cleanly: a later start needs no recovery).
        assert not cluster.is_running()
        assert "stopping embedded Postgres" in run.output()
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://{api}/healthz", timeout=2)
    finally:
        run.stop()
