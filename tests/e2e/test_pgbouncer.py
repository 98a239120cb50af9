"""bgjobs through a real PgBouncer (tests/pgbouncer.py) with its default settings.

In transaction mode every call a web process makes works through it (the public API, with
and without ``conn=``, the Flask extension, the API and its dashboard's reads, the CLI), a
worker claims and writes through it while its LISTEN takes BGJOBS_DIRECT_URL, and SSE clients
get each job's final state; anything that LISTENs on it says so in one line. In session mode
one URL through the pooler does everything, LISTEN included.
"""

from __future__ import annotations

import subprocess
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from flask import Flask, session

import bgjobs
from bgjobs.core.db import make_pool
from bgjobs.core.errors import DatabaseError, DatabaseUnavailable, NoSession
from bgjobs.core.store import Store
from bgjobs.flask import BgJobs
from tests.conftest import add_host_user, doc_code, url_env
from tests.e2e.test_api_gunicorn import Server, start_api  # noqa: F401 - a fixture
from tests.e2e.test_events_service import Reader, auth, start_events
from tests.integration.test_enqueue import CountingCursor
from tests.pgbouncer import Pooler, config, pgbouncer
from tests.procs import BGJOBS, Proc, free_port, wait_until

THREADS, ROUNDS = 16, 100


@pytest.fixture
def pooled(transaction_pooler: Pooler, db_url: str) -> Iterator[Store]:
    """A store whose pool goes through the transaction pooler."""
    pool = make_pool(transaction_pooler.url(db_url), min_size=1, max_size=THREADS,
                     open_wait=True)
    try:
        yield Store(pool)
    finally:
        pool.close()


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BGJOBS, *args], env=env, capture_output=True, text=True, timeout=120)


def start_worker(env: dict[str, str], log: Path) -> Proc:
    proc = Proc([BGJOBS, "worker", "--concurrency", "2"], env=env, log_path=log)
    wait_until(lambda: "listening for jobs" in proc.output(), 30, "the worker listening", proc)
    return proc


def counts(db_url: str) -> dict[str, int]:
    with psycopg.connect(db_url) as conn:
        return dict(conn.execute("SELECT status, count(*) FROM background_jobs GROUP BY 1"))


def settings(ini: str) -> dict[str, str]:
    return {k.strip(): v.strip() for k, _, v in (line.partition("=") for line in ini.splitlines()
                                                 if "=" in line)}


def test_the_docs_show_the_settings_these_tests_run(tmp_path: Path) -> None:
    shown = settings(doc_code("operations.md", "## Connection poolers", "ini"))
    tested = settings(config("postgresql://postgres@127.0.0.1:5432/x", 6432, "transaction",
                             Path("/etc/pgbouncer")))
    tested.pop("user", None)  # only when the tests run as root: PgBouncer refuses root
    assert shown == tested


# Transaction mode: the web side ------------------------------------------------------------


def test_16_threads_enqueue_read_and_cancel_through_it_without_one_error(
        pooled: Store, transaction_pooler: Pooler, db_url: str) -> None:
    url = transaction_pooler.url(db_url)
    errors: Counter[str] = Counter()
    done = Counter[str]()

    def client(n: int) -> None:
        # Every fourth thread enqueues in transactions of its own connection, made with
        # psycopg's defaults (prepared statements after 5 runs), as a host app's would be.
        own = psycopg.connect(url) if n % 4 == 0 else None
        try:
            for i in range(ROUNDS):
                try:
                    if own is not None:
                        with own.transaction():
                            job = bgjobs.enqueue("noop", {"echo": [n, i]}, conn=own,
                                                 store=pooled)
                            if i % 10 == 0:
                                bgjobs.enqueue_many("noop", [{"echo": i}], conn=own, store=pooled)
                    elif i % 10 == 0:
                        job, _ = bgjobs.enqueue_many("noop", [{"echo": n}, {"echo": i}],
                                                     store=pooled)
                    else:
                        job = bgjobs.enqueue("noop", {"echo": [n, i]}, store=pooled)
                    got = bgjobs.get_job(job.id, store=pooled)
                    assert got is not None and got.status == "pending"
                    assert bgjobs.cancel(job.id, store=pooled).status == "cancelled"
                    done["rounds"] += 1
                except Exception as exc:  # noqa: BLE001 - counted, then asserted none
                    errors[f"{type(exc).__name__}: {exc}"[:160]] += 1
        finally:
            if own is not None:
                own.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors.most_common(5)
    assert done["rounds"] == THREADS * ROUNDS
    # enqueue_many added one job more every tenth round, left pending.
    assert counts(db_url) == {"cancelled": THREADS * ROUNDS, "pending": THREADS * ROUNDS // 10}


def test_one_enqueue_is_still_one_statement_and_prepares_nothing(
        transaction_pooler: Pooler, db_url: str) -> None:
    pool = make_pool(transaction_pooler.url(db_url), min_size=1, max_size=1, open_wait=True,
                     cursor_factory=CountingCursor)
    direct = make_pool(db_url, min_size=1, max_size=1, open_wait=True)
    try:
        store = Store(pool)
        bgjobs.enqueue("noop", store=store)
        with pool.connection() as conn:
            before = conn.statements  # type: ignore[attr-defined]
            assert conn.prepare_threshold is None  # behind a pooler: never prepared
        bgjobs.enqueue("noop", store=store)
        with pool.connection() as conn:
            assert conn.statements == before + 1  # type: ignore[attr-defined]
        with direct.connection() as conn:
            assert conn.prepare_threshold == 5  # straight to Postgres: prepared, as before
    finally:
        pool.close()
        direct.close()


def test_the_flask_extension_works_through_it(transaction_pooler: Pooler,
                                              host_db_url: str) -> None:
    url = transaction_pooler.url(host_db_url)
    ada = add_host_user(host_db_url, "ada@example.com")
    app = Flask("host_app")
    app.config.update(SECRET_KEY="host", BGJOBS_DATABASE_URL=url, BGJOBS_SECRET_KEY="s")
    ext = BgJobs(app, current_user_id=lambda: session.get("user_id"))
    try:
        with app.test_client() as client:
            client.environ_base["HTTP_ORIGIN"] = "http://localhost"
            with client.session_transaction() as s:
                s["user_id"] = ada
            for i in range(30):  # past psycopg's prepare threshold on every statement
                job = client.post("/jobs", json={"type": "noop", "params": {"echo": i}})
                assert job.status_code == 202, job.json
                assert client.get(f"/jobs/{job.json['id']}").json["status"] == "pending"
                assert client.get("/jobs", query_string={"limit": 5}).status_code == 200
                cancel = client.post(f"/jobs/{job.json['id']}/cancel")
                assert cancel.status_code == 200, cancel.json
    finally:
        ext.close(app)


def test_a_prepared_statement_error_is_not_reported_as_an_outage(
        server_url: str, database_url: str) -> None:
    with pgbouncer(server_url, "transaction") as fresh:  # no server connection yet
        url = fresh.url(database_url)
        # Prepared on first use, as psycopg does after 5: the mistake this guards against.
        pool = make_pool(url, min_size=1, max_size=1, open_wait=True, prepare_threshold=0)
        store = Store(pool)
        try:
            store.get_jobs([])  # prepared on the pooler's first server connection
            with psycopg.connect(url) as other, other.transaction():
                other.execute("SELECT 1")  # holds that server connection
                with pytest.raises(DatabaseError) as refused:
                    store.get_jobs([])  # runs on a second one, where it was never prepared
            assert not isinstance(refused.value, DatabaseUnavailable)
            assert "prepared statement" in str(refused.value)
            assert not pool.breaker.is_open
        finally:
            pool.close()


def test_a_pooler_whose_postgres_is_gone_is_an_outage(server_url: str) -> None:
    gone = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    with pgbouncer(server_url, "transaction", target_url=gone) as pooler:
        pool = make_pool(pooler.url(gone), min_size=1, max_size=1, timeout=2)
        try:
            with pytest.raises(DatabaseUnavailable):
                Store(pool).get_jobs([])
        finally:
            pool.close()


def test_postgres_restarting_behind_it_is_an_outage_not_a_refused_statement(
        private_cluster) -> None:
    """After Postgres went away under an open pool, PgBouncer answers with its own ERRORs
    ("server conn crashed?", "query_wait_timeout", "server login has been failing"):
    an outage, so the API answers 503 and the worker backs off, without a traceback."""
    direct = private_cluster.url()
    # Its default query_wait_timeout holds a query 120 s before it answers.
    with pgbouncer(direct, "transaction", settings={"query_wait_timeout": "3"}) as pooler:
        pool = make_pool(pooler.url(direct), min_size=1, max_size=1, timeout=2)
        try:
            store = Store(pool)
            store.get_jobs([])
            private_cluster.stop()
            for _ in range(3):  # each answer PgBouncer gives while it cannot log in
                with pytest.raises(DatabaseUnavailable):
                    store.get_jobs([])
        finally:
            pool.close()


# Transaction mode: the whole life of jobs ---------------------------------------------------


def test_api_cli_worker_and_streams_through_it(
        start_api: Callable[..., Server], transaction_pooler: Pooler, db_url: str,  # noqa: F811
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pooled_url = transaction_pooler.url(db_url)
    env = {**url_env(pooled_url), "BGJOBS_DIRECT_URL": db_url}
    made = cli(env, "user", "create", "alice", "--admin")
    assert made.returncode == 0, made.stderr
    token = made.stdout.split()[-1]
    api = start_api(pooled_url, BGJOBS_DIRECT_URL=db_url)
    events = start_events(pooled_url, tmp_path / "events.log", BGJOBS_DIRECT_URL=db_url)
    try:
        with api.client(token) as http:
            ids = []
            for i in range(20):
                r = http.post("/api/jobs", json={"type": "noop", "params": {"echo": i}})
                assert r.status_code == 202, r.text
                ids.append(r.json()["id"])
            readers = [Reader(f"{events.base}/events/jobs/{job_id}", auth(token))
                       for job_id in ids[:10]]
            for reader in readers:
                reader.wait_events(1)
            worker = start_worker({**env, "BGJOBS_TASK_MODULES": "tests.task_fixtures"},
                                  tmp_path / "worker.log")
            try:
                for reader in readers:
                    final = reader.join()[-1]["data"]
                    assert final["status"] == "complete", final
                wait_until(lambda: counts(db_url) == {"complete": 20}, 30, "all 20 complete",
                           worker)
                # The dashboard's reads, through the pooler.
                assert http.get("/api/jobs", params={"limit": 50}).json()["jobs"][0]["status"]
                overview = http.get("/api/admin/overview")
                assert overview.status_code == 200, overview.text
                assert http.get("/api/admin/jobs").status_code == 200
                # bgjobs.wait: its LISTEN on BGJOBS_DIRECT_URL, its reads through the pooler.
                monkeypatch.setenv("BGJOBS_DIRECT_URL", db_url)
                pool = make_pool(pooled_url, min_size=1, max_size=2, open_wait=True)
                try:
                    job = bgjobs.enqueue("noop", store=Store(pool))
                    assert bgjobs.wait(job.id, timeout=30, store=Store(pool)).status == "complete"
                finally:
                    pool.close()
            finally:
                said = worker.output()
                assert worker.stop() == 0, said[-3000:]
            assert "Traceback" not in said, said[-3000:]
        # The CLI's job commands, through the pooler.
        queued = cli(env, "enqueue", "noop", "--params", '{"echo": "cli"}')
        assert queued.returncode == 0, queued.stderr
        listed = cli(env, "jobs", "--status", "pending", "--json")
        assert listed.returncode == 0 and queued.stdout.strip() in listed.stdout, listed
        cancelled = cli(env, "cancel", queued.stdout.strip())
        assert cancelled.returncode == 0, cancelled.stderr
        assert "Traceback" not in events.proc.output() + api.proc.output()
    finally:
        events.proc.stop()


def test_a_listen_on_it_says_so_in_one_line(transaction_pooler: Pooler, db_url: str,
                                            tmp_path: Path) -> None:
    pooled_url = transaction_pooler.url(db_url)
    env = url_env(pooled_url)
    for command in (["worker"], ["migrate"]):
        run = cli(env, *command)
        assert run.returncode == 1, (command, run.stdout, run.stderr)
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and "BGJOBS_DIRECT_URL" in lines[0], (command, run.stderr)
        assert "Traceback" not in run.stderr

    pool = make_pool(pooled_url, min_size=1, max_size=1, open_wait=True)
    try:
        job = bgjobs.enqueue("noop", store=Store(pool))
        with pytest.raises(NoSession, match="BGJOBS_DIRECT_URL"):
            bgjobs.wait(job.id, timeout=30, store=Store(pool))
    finally:
        pool.close()

    port = free_port()
    proc = Proc([BGJOBS, "events"], env={**env, "BGJOBS_EVENTS_BIND": f"127.0.0.1:{port}",
                                          "BGJOBS_SECRET_KEY": "s"},
                log_path=tmp_path / "events.log")
    try:
        wait_until(lambda: "BGJOBS_DIRECT_URL" in proc.output(), 30, "the events' line", proc)
        health = httpx.get(f"http://127.0.0.1:{port}/events/healthz", timeout=5)
        assert health.status_code == 503 and health.json()["listen_connected"] is False
        said = [line for line in proc.output().splitlines() if "BGJOBS_DIRECT_URL" in line]
        assert len(said) == 1 and "ERROR" in said[0], said
    finally:
        proc.stop()


# Session mode: one URL for everything ------------------------------------------------------


def test_session_mode_carries_everything_listen_included(
        session_pooler: Pooler, db_url: str, tmp_path: Path) -> None:
    url = session_pooler.url(db_url)
    env = {**url_env(url), "BGJOBS_TASK_MODULES": "tests.task_fixtures"}
    pool = make_pool(url, min_size=1, max_size=4, open_wait=True)
    store = Store(pool)
    user, token = store.create_user(f"u{uuid.uuid4().hex[:8]}")
    events = start_events(url, tmp_path / "events.log")
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        jobs = [bgjobs.enqueue("noop", {"echo": i}, user_id=user.id, store=store)
                for i in range(10)]
        readers = [Reader(f"{events.base}/events/jobs/{job.id}", auth(token)) for job in jobs]
        for reader in readers:
            assert reader.join()[-1]["data"]["status"] == "complete"
        late = bgjobs.enqueue("noop", store=store)
        assert bgjobs.wait(late.id, timeout=30, store=store).status == "complete"
        assert "Traceback" not in worker.output() + events.proc.output()
    finally:
        worker.stop()
        events.proc.stop()
        pool.close()
