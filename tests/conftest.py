"""Test fixtures: a real Postgres (DATABASE_URL's server, or the embedded cluster), one
migrated database per test session, clean tables per test.

The rule for the test tree:
- ``tests/unit/``: no Postgres and no processes; pure functions and in-memory objects.
- ``tests/integration/``: Postgres, in this one process (the store, the Flask app through its
  test client, the events app in-process, a worker child driven over a socket pair).
- ``tests/e2e/``: real processes (gunicorn, `bgjobs worker`, an installed wheel, a browser).
Benchmarks are not tests: they live in ``bench/`` and run with ``make bench``.

The session's embedded cluster, when this session starts it, runs without fsync and
synchronous_commit (BGJOBS_PG_DURABLE=0, unless set otherwise): tests throw their data away.
``private_cluster`` stays durable, as the crash tests need.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from bgjobs.core import config, embedded, migrate
from bgjobs.core.db import make_pool
from bgjobs.core.jobs import Job
from bgjobs.core.store import NewJob, Store
from tests.pgbouncer import Pooler, pgbouncer

os.environ.setdefault("BGJOBS_PG_DURABLE", "0")  # see the docstring
_started_cluster: embedded.Cluster | None = None


def _server_url() -> str:
    """A URL to the server's maintenance database."""
    global _started_cluster
    url = os.environ.get("DATABASE_URL")
    if url:
        return make_conninfo(url, dbname="postgres")
    cfg = config.load()
    cluster = embedded.Cluster(cfg.data_dir, cfg.pg_bin, cfg.pg_durable)
    if cluster.ensure_running():
        _started_cluster = cluster
    return cluster.url("postgres")


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    url = _server_url()
    yield url
    if _started_cluster is not None:
        _started_cluster.stop()


@contextmanager
def migrated_database(server_url: str, app_schema: str | None = None) -> Iterator[str]:
    """A new database (first given ``app_schema``, an app's own tables), migrated; dropped after."""
    name = f"bgjobs_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_conninfo(server_url, dbname=name)
    try:
        if app_schema:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(app_schema)
        with psycopg.connect(url) as conn:
            migrate.apply(conn)
        yield url
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def database_url(server_url: str) -> Iterator[str]:
    """A fresh database for this session, migrated once, dropped at the end."""
    with migrated_database(server_url) as url:
        yield url


def truncate(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE background_jobs, bgjobs_api_tokens, bgjobs_users, "
                     "bgjobs_job_types, bgjobs_schedules, bgjobs_workers "
                     "RESTART IDENTITY CASCADE")


@pytest.fixture
def db_url(database_url: str) -> str:
    """The session database with empty tables."""
    truncate(database_url)
    return database_url


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(db_url, autocommit=True) as c:
        yield c


@contextmanager
def store_on(url: str) -> Iterator[Store]:
    """A store with a pool of its own on ``url``, closed after."""
    pool = make_pool(url, min_size=1, max_size=10, open_wait=True)
    try:
        yield Store(pool)
    finally:
        pool.close()


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    with store_on(db_url) as s:
        yield s


@pytest.fixture
def new_database(server_url: str) -> Iterator[Callable[[], str]]:
    """Makes empty, unmigrated databases (for migration tests); drops them afterwards."""
    made: list[str] = []

    def make() -> str:
        name = f"bgjobs_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(server_url, autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        made.append(name)
        return make_conninfo(server_url, dbname=name)

    yield make
    with psycopg.connect(server_url, autocommit=True) as c:
        for name in made:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def add_job(store: Store, job_type: str = "noop", params: dict | None = None, *,
            conn: psycopg.Connection | None = None, **fields: object) -> Job:
    """Insert a job straight through the store (any type, registered or not), for fixtures."""
    new = NewJob(job_type, params or {}, **fields)  # type: ignore[arg-type]
    return store.insert_job(new, conn=conn).job


def wait_for(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.05,
             message: str = "condition") -> object:
    """Poll ``predicate`` until it returns something truthy, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def url_env(url: str) -> dict[str, str]:
    """An environment for a child process that points it at ``url``."""
    return {**os.environ, "DATABASE_URL": url, "PYTHONUNBUFFERED": "1"}


def doc_code(doc: str, heading: str, language: str) -> str:
    """The first ``language`` code block under ``heading`` in docs/``doc``: tests run what the
    docs show, as written."""
    text = (Path(__file__).parent.parent / "docs" / doc).read_text()
    section = text.split(heading, 1)[1]
    return section.split(f"```{language}\n", 1)[1].split("```", 1)[0]


def dbname(url: str) -> str:
    return conninfo_to_dict(url)["dbname"]


@contextmanager
def throwaway_cluster() -> Iterator[embedded.Cluster]:
    """A durable Postgres of its own, migrated, deleted afterwards."""
    # Not under pytest's temp root: every new pytest session (another one running alongside)
    # resets that root to 0700, which locks the cluster's system user out mid-test.
    path = Path(tempfile.mkdtemp(prefix="bgjobs-test-pg-"))
    cluster = embedded.Cluster(path, config.load().pg_bin)  # BGJOBS_PG_BIN: make test-postgres
    try:
        cluster.ensure_running()
        with psycopg.connect(cluster.url()) as c:
            migrate.apply(c)
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def private_cluster() -> Iterator[embedded.Cluster]:
    """A throwaway Postgres of this test's own, for tests that stop, restart or crash it."""
    with throwaway_cluster() as cluster:
        yield cluster


@pytest.fixture
def listener(db_url: str) -> Iterator[psycopg.Connection]:
    """A connection LISTENing on both bgjobs channels."""
    with psycopg.connect(db_url, autocommit=True) as c:
        c.execute("LISTEN background_jobs_new")
        c.execute("LISTEN background_jobs_progress")
        yield c


def drain(conn: psycopg.Connection) -> list[tuple[str, str]]:
    """Every notification delivered so far (the sender has committed before we look)."""
    return [(n.channel, n.payload) for n in conn.notifies(timeout=0.5, stop_after=None)]


# A host app's database: bgjobs installed beside the app's own users table ---------------------

#: The users table of a host app (the seed's shape): bgjobs's jobs and users reference it.
HOST_USERS_SCHEMA = """
CREATE TABLE users (
    id SERIAL PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
"""


@pytest.fixture(scope="session")
def host_database_url(server_url: str) -> Iterator[str]:
    """A database that held an app's users table before bgjobs was migrated into it."""
    with migrated_database(server_url, HOST_USERS_SCHEMA) as url:
        yield url


@pytest.fixture
def host_db_url(host_database_url: str) -> str:
    """The host database with empty tables, the app's users included."""
    with psycopg.connect(host_database_url, autocommit=True) as conn:
        conn.execute("TRUNCATE background_jobs, bgjobs_api_tokens, bgjobs_users, users "
                     "RESTART IDENTITY CASCADE")
    return host_database_url


@pytest.fixture
def host_store(host_db_url: str) -> Iterator[Store]:
    with store_on(host_db_url) as s:
        yield s


def add_host_user(url: str, email: str) -> int:
    """A row of the host app's users table; its id."""
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute("INSERT INTO users (email) VALUES (%s) RETURNING id",
                            (email,)).fetchone()[0]


@pytest.fixture(scope="session")
def transaction_pooler(server_url: str) -> Iterator[Pooler]:
    """A real PgBouncer in transaction mode, default settings, in front of the server."""
    with pgbouncer(server_url, "transaction") as pooler:
        yield pooler


@pytest.fixture(scope="session")
def session_pooler(server_url: str) -> Iterator[Pooler]:
    """A real PgBouncer in session mode, default settings, in front of the server."""
    with pgbouncer(server_url, "session") as pooler:
        yield pooler
