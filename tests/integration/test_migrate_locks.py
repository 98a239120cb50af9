"""Migrations on a busy database: each takes its locks under a lock_timeout, tries again
(saying who holds the lock), and gives up in one line with nothing of it applied; a
no-transaction migration builds its index concurrently, and an interrupted build is dropped.
The same with the real `bgjobs migrate` and a running API: tests/e2e/test_migrate_under_load.py.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from bgjobs.core import migrate

FAST = migrate.LockPolicy(timeout=1.0, tries=3, backoff=0.1)

BLOCKED = """-- A migration that needs an ACCESS EXCLUSIVE lock on background_jobs.
CREATE TABLE bgjobs_lock_test (id int);
ALTER TABLE background_jobs ADD COLUMN lock_test_note text;
"""

INDEX = """-- bgjobs:no-transaction
-- An index on an existing table, built without blocking writes.
CREATE INDEX CONCURRENTLY IF NOT EXISTS background_jobs_lock_test_idx
    ON background_jobs (updated_at);
"""


def with_migration(tmp_path: Path, name: str, text: str) -> Path:
    """The packaged migrations and one more."""
    folder = tmp_path / "migrations"
    shutil.copytree(str(migrate.migrations_dir()), folder)
    (folder / name).write_text(text)
    return folder


@pytest.fixture
def migrated(new_database: Callable[[], str]) -> str:
    url = new_database()
    with psycopg.connect(url) as conn:
        migrate.apply(conn)
        conn.execute("INSERT INTO background_jobs (job_type) VALUES ('noop')")
        conn.commit()
    return url


@contextmanager
def long_transaction(url: str, statement: str) -> Iterator[psycopg.Connection]:
    """A session idle in a transaction that ran ``statement`` (and holds its locks)."""
    with psycopg.connect(url) as holder:
        holder.execute(statement)
        yield holder
        holder.rollback()


def applied(url: str, version: int) -> bool:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM bgjobs_migrations WHERE version = %s",
                            (version,)).fetchone() == (1,)


def test_a_migration_waiting_for_a_lock_retries_then_gives_up_applying_nothing(
        migrated, tmp_path, caplog):
    folder = with_migration(tmp_path, "900_blocked.sql", BLOCKED)
    caplog.set_level(logging.WARNING, logger="bgjobs.core.migrate")
    with long_transaction(migrated, "SELECT count(*) FROM background_jobs") as holder:
        pid = holder.info.backend_pid
        blocker = (rf"a lock on background_jobs held by pid {pid} \(idle in transaction for "
                   r"\d+s: SELECT count\(\*\) FROM background_jobs\)")
        with psycopg.connect(migrated) as conn, pytest.raises(
                migrate.MigrationError,
                match=rf"^900_blocked.sql: gave up after 3 tries of 1s waiting for {blocker}; "
                      "nothing of it was applied"):
            migrate.apply(conn, folder, locks=FAST)
    waits = [r.getMessage() for r in caplog.records if "waiting for" in r.getMessage()]
    assert len(waits) == 2, waits
    assert all(f"waiting for a lock on background_jobs held by pid {pid}" in w for w in waits)
    assert waits[0].endswith("try 2 of 3 in 0s")
    with psycopg.connect(migrated) as conn:
        assert conn.execute("SELECT to_regclass('bgjobs_lock_test')").fetchone() == (None,)
        assert conn.execute("SELECT count(*) FROM information_schema.columns "
                            "WHERE column_name = 'lock_test_note'").fetchone() == (0,)
    assert not applied(migrated, 900)


def test_a_migration_applies_once_the_lock_is_released(migrated, tmp_path):
    folder = with_migration(tmp_path, "900_blocked.sql", BLOCKED)
    waited = threading.Event()

    class OnWait(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "waiting for a lock on background_jobs" in record.getMessage():
                waited.set()

    handler = OnWait()
    logging.getLogger("bgjobs.core.migrate").addHandler(handler)
    try:
        with long_transaction(migrated, "SELECT count(*) FROM background_jobs") as holder:
            def release() -> None:
                assert waited.wait(30)
                holder.rollback()  # the long transaction ends between two tries

            releaser = threading.Thread(target=release)
            releaser.start()
            with psycopg.connect(migrated) as conn:
                assert migrate.apply(conn, folder, locks=FAST) == ["900_blocked.sql"]
            releaser.join()
    finally:
        logging.getLogger("bgjobs.core.migrate").removeHandler(handler)
    assert applied(migrated, 900)


def test_an_index_is_built_concurrently_and_an_interrupted_build_is_dropped(migrated, tmp_path,
                                                                            caplog):
    folder = with_migration(tmp_path, "900_index.sql", INDEX)
    caplog.set_level(logging.WARNING, logger="bgjobs.core.migrate")
    # A transaction that wrote to the table: the build waits for it to end, writes go on.
    with long_transaction(migrated, "UPDATE background_jobs SET priority = 1") as holder:
        pid = holder.info.backend_pid
        with psycopg.connect(migrated) as conn, pytest.raises(
                migrate.MigrationError, match=rf"900_index.sql: gave up .* pid {pid} "):
            migrate.apply(conn, folder, locks=FAST)
        with psycopg.connect(migrated, autocommit=True) as writer:  # writes were never blocked
            writer.execute("INSERT INTO background_jobs (job_type) VALUES ('noop')")
    assert not applied(migrated, 900)
    with psycopg.connect(migrated, autocommit=True) as conn:
        # An interrupted build may leave an INVALID index: the next run drops it first.
        left = conn.execute("SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = "
                            "to_regclass('background_jobs_lock_test_idx')").fetchall()
        assert left in ([], [(False,)])
        if not left:  # make the case this test is about: an interrupted build's leftover
            conn.execute("CREATE INDEX background_jobs_lock_test_idx ON background_jobs "
                         "(updated_at)")
            conn.execute("UPDATE pg_index SET indisvalid = false WHERE indexrelid = "
                         "'background_jobs_lock_test_idx'::regclass")
        assert migrate.apply(conn, folder, locks=FAST) == ["900_index.sql"]
        assert conn.execute("SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = "
                            "'background_jobs_lock_test_idx'::regclass").fetchone() == (True,)
    assert any("dropping the invalid index background_jobs_lock_test_idx" in r.getMessage()
               for r in caplog.records)
    assert applied(migrated, 900)


@pytest.mark.parametrize("text", [
    "-- bgjobs:no-transaction\nCREATE INDEX CONCURRENTLY a ON t (x);\nCREATE INDEX b ON t (y);",
    "-- bgjobs:no-transaction\nCREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$;",
])
def test_a_no_transaction_migration_holds_one_statement(tmp_path, text):
    (tmp_path / "001_two.sql").write_text(text)
    with pytest.raises(migrate.MigrationError, match="exactly one statement"):
        migrate.discover(tmp_path)


def test_the_marker_is_only_read_on_the_first_line(tmp_path):
    (tmp_path / "001_a.sql").write_text("SELECT 1;\n-- bgjobs:no-transaction\nSELECT 2;")
    (tmp_path / "002_b.sql").write_text(INDEX)
    first, second = migrate.discover(tmp_path)
    assert first.transactional and not second.transactional
    assert second.concurrent_indexes == ["background_jobs_lock_test_idx"]


def test_a_failing_no_transaction_migration_is_not_recorded(migrated, tmp_path):
    folder = with_migration(tmp_path, "900_bad.sql",
                            "-- bgjobs:no-transaction\nCREATE INDEX CONCURRENTLY nope "
                            "ON background_jobs (no_such_column);")
    with psycopg.connect(migrated) as conn, pytest.raises(
            migrate.MigrationError, match="900_bad.sql failed: .*no_such_column"):
        migrate.apply(conn, folder, locks=FAST)
    assert not applied(migrated, 900)
