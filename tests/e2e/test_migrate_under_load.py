"""`bgjobs migrate` of a new migration while a long transaction holds a lock on background_jobs
and the API (gunicorn) takes jobs: the API keeps answering, and migrate either gives up in one
line having applied nothing of it, or finishes once the transaction ends. The new migration is
added to a copy of the packaged ones (the real command runs with its folder pointed there).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
import pytest

from bgjobs.core import migrate
from tests.conftest import store_on, url_env
from tests.procs import BGJOBS, Proc, free_port, wait_until

#: `bgjobs migrate`, with the packaged migrations replaced by the folder given as argv[1].
MIGRATE = """
import sys
from pathlib import Path
from bgjobs.core import migrate
migrate.migrations_dir = lambda: Path(sys.argv[1])
from bgjobs.cli import main
sys.exit(main(["migrate"]))
"""

ADD_COLUMN = """-- Needs an ACCESS EXCLUSIVE lock on background_jobs.
CREATE TABLE bgjobs_load_test (id int);
ALTER TABLE background_jobs ADD COLUMN load_test_note text;
"""

ADD_INDEX = """-- bgjobs:no-transaction
CREATE INDEX CONCURRENTLY IF NOT EXISTS background_jobs_load_test_idx
    ON background_jobs (updated_at);
"""

SETTINGS = {"BGJOBS_MIGRATE_LOCK_TIMEOUT": "1", "BGJOBS_MIGRATE_LOCK_TRIES": "3"}


@dataclass
class Traffic:
    """Clients enqueueing and reading jobs through the API until stopped."""

    base: str
    token: str
    answers: Counter = field(default_factory=Counter)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self, clients: int = 3) -> Traffic:
        for _ in range(clients):
            thread = threading.Thread(target=self._run, daemon=True)
            thread.start()
            self.threads.append(thread)
        return self

    def _run(self) -> None:
        auth = {"Authorization": f"Bearer {self.token}"}
        with httpx.Client(base_url=self.base, headers=auth, timeout=30) as client:
            while not self.stop.is_set():
                try:
                    posted = client.post("/api/jobs", json={"type": "noop", "params": {}})
                    self.answers[posted.status_code] += 1
                    if posted.status_code == 202:
                        got = client.get(f"/api/jobs/{posted.json()['id']}")
                        self.answers[got.status_code] += 1
                except httpx.HTTPError as exc:
                    self.answers[type(exc).__name__] += 1

    def total(self) -> int:
        return sum(self.answers.values())

    def finish(self) -> Counter:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)
        return self.answers


@dataclass
class Setup:
    url: str
    api: str
    token: str
    folder: Path
    tmp: Path

    def migrate(self, **settings: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-c", MIGRATE, str(self.folder)],
                                env={**url_env(self.url), **SETTINGS, **settings}, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def traffic(self) -> Traffic:
        return Traffic(self.api, self.token).start()

    def applied(self, version: int) -> bool:
        with psycopg.connect(self.url) as conn:
            return conn.execute("SELECT count(*) FROM bgjobs_migrations WHERE version = %s",
                                (version,)).fetchone() == (1,)


@pytest.fixture
def setup(new_database: Callable[[], str], tmp_path: Path) -> Iterator[Callable[[str, str],
                                                                                 Setup]]:
    procs: list[Proc] = []

    def make(name: str, text: str) -> Setup:
        url = new_database()
        with psycopg.connect(url) as conn:
            migrate.apply(conn)
        with store_on(url) as store:
            _, token = store.create_user("busy")
        folder = tmp_path / "migrations"
        shutil.copytree(str(migrate.migrations_dir()), folder)
        (folder / name).write_text(text)
        port = free_port()
        env = {**url_env(url), "BGJOBS_API_BIND": f"127.0.0.1:{port}",
               "BGJOBS_API_WORKERS": "2", "BGJOBS_API_THREADS": "4",
               "BGJOBS_SECRET_KEY": "load"}
        proc = Proc([BGJOBS, "api"], env, tmp_path / "api.log")
        procs.append(proc)
        api = f"http://127.0.0.1:{port}"
        wait_until(lambda: httpx.get(f"{api}/healthz", timeout=5).status_code == 200, 60,
                   "the API", proc)
        return Setup(url, api, token, folder, tmp_path)

    yield make
    for proc in procs:
        proc.stop()


def test_migrate_gives_up_in_one_line_then_finishes_once_the_transaction_ends(setup):
    s = setup("900_load_test.sql", ADD_COLUMN)
    with psycopg.connect(s.url) as holder:
        holder.execute("SELECT count(*) FROM background_jobs")  # idle in transaction from now
        pid = holder.info.backend_pid
        traffic = s.traffic()
        before = wait_until(traffic.total, 30, "API traffic")
        gave_up = s.migrate()
        out, err = gave_up.communicate(timeout=120)
        during = traffic.total() - before  # type: ignore[operator]
        lines = err.strip().splitlines()
        assert gave_up.returncode == 1, err
        assert "Traceback" not in err
        waits = [line for line in lines[:-1] if "waiting for a lock on background_jobs" in line]
        assert len(waits) == 2 and all(f"held by pid {pid} (idle in transaction" in w
                                       for w in waits), err
        assert lines[-1].startswith(f"bgjobs: 900_load_test.sql: gave up after 3 tries of 1s "
                                    f"waiting for a lock on background_jobs held by pid {pid} ")
        assert lines[-1].endswith("nothing of it was applied: end that session or run "
                                  "`bgjobs migrate` again later")
        assert not s.applied(900)
        with psycopg.connect(s.url) as conn:
            assert conn.execute("SELECT to_regclass('bgjobs_load_test')").fetchone() == (None,)

        finishes = s.migrate()  # this time the transaction ends while migrate waits
        lines_seen: list[str] = []

        def waiting() -> bool:
            assert finishes.stderr is not None
            lines_seen.append(finishes.stderr.readline())
            return "waiting for a lock on background_jobs" in lines_seen[-1]

        wait_until(waiting, 60, "migrate waiting for the lock")
        holder.rollback()
    out, err = finishes.communicate(timeout=120)
    assert finishes.returncode == 0, "".join(lines_seen) + err
    assert "applied 900_load_test.sql" in out
    assert s.applied(900)
    answers = traffic.finish()
    assert during > 0, "the API answered nothing while migrate ran"
    assert set(answers) <= {200, 202}, answers


def test_an_index_is_built_while_writes_go_on(setup):
    s = setup("900_load_index.sql", ADD_INDEX)
    with psycopg.connect(s.url) as holder:
        # A transaction that wrote to the table: the concurrent build waits for it to end.
        holder.execute("UPDATE background_jobs SET priority = priority")
        traffic = s.traffic()
        # One long wait: the build waits for the transaction, writes do not wait for the build.
        waiting = s.migrate(BGJOBS_MIGRATE_LOCK_TIMEOUT="120", BGJOBS_MIGRATE_LOCK_TRIES="1")
        wait_until(lambda: _waiting_for_build(s.url), 60, "the index build waiting")
        before = traffic.total()
        wait_until(lambda: traffic.total() > before + 20, 60, "writes while the build waits")
        holder.rollback()
    out, err = waiting.communicate(timeout=120)
    assert waiting.returncode == 0, err
    assert "applied 900_load_index.sql" in out
    with psycopg.connect(s.url) as conn:
        assert conn.execute("SELECT indisvalid FROM pg_index WHERE indexrelid = "
                            "'background_jobs_load_test_idx'::regclass").fetchone() == (True,)
    answers = traffic.finish()
    assert set(answers) <= {200, 202}, answers


def _waiting_for_build(url: str) -> bool:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = "
                            "current_database() AND query LIKE '%%CREATE INDEX CONCURRENTLY%%' "
                            "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
                            ).fetchone()[0] > 0
