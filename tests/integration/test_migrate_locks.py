"""Migrations on a busy database: each takes its locks under a lock_timeout, tries again
(saying who holds the lock), and gives up in one line with nothing of it applied; a
no-transaction migration builds its index concurrently, and an interrupted build is dropped.
The same with the real `bgjobs migrate` and a running API: tests/e2e/test_migrate_under_load.py.
"""

from __future__ import annotations

import logging
import re
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


def test_the_baseline_waits_for_the_apps_users_table_too(new_database):
    """A fresh install references the app's users(id), which locks users briefly: under a
    lock_timeout as well, and nothing is left of it when it gives up."""
    url = new_database()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE users (id SERIAL PRIMARY KEY, email TEXT)")
    with long_transaction(url, "LOCK TABLE users IN SHARE MODE") as holder:
        pid = holder.info.backend_pid
        with psycopg.connect(url) as conn, pytest.raises(
                migrate.MigrationError,
                match=rf"^baseline/\d+_schema.sql: gave up after 3 tries of 1s waiting for a lock "
                      rf"on users held by pid {pid} "):
            migrate.apply(conn, locks=FAST)
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass('background_jobs')").fetchone() == (None,)
        assert conn.execute("SELECT count(*) FROM bgjobs_migrations").fetchone() == (0,)
        assert migrate.apply(conn, locks=FAST)  # and it installs once users is free


#: Statements that lock background_jobs against writes for as long as they scan it. From 015 on
#: (012-014 were written alongside this rule) a migration builds indexes on it concurrently
#: and adds constraints NOT VALID, validating them in a later file (docs/operations.md).
BLOCKING = [
    (re.compile(r"CREATE\s+(UNIQUE\s+)?INDEX\s+(?!CONCURRENTLY)[^;]*\sON\s+background_jobs\b",
                re.I), "CREATE INDEX CONCURRENTLY, in a -- bgjobs:no-transaction file"),
    (re.compile(r"ALTER\s+TABLE\s+background_jobs\b[^;]*ADD\s+(CONSTRAINT\s+\w+\s+)?"
                r"(CHECK|FOREIGN\s+KEY)(?![^;]*NOT\s+VALID)", re.I),
     "ADD CONSTRAINT ... NOT VALID, then VALIDATE CONSTRAINT in a later file"),
    (re.compile(r"ALTER\s+TABLE\s+background_jobs\b[^;]*(SET\s+NOT\s+NULL|\sTYPE\s)", re.I),
     "a CHECK (col IS NOT NULL) NOT VALID, validated in a later file"),
]


def test_later_migrations_do_not_block_writes_to_background_jobs():
    for migration in (m for m in migrate.discover() if m.version >= 15):
        for pattern, instead in BLOCKING:
            found = pattern.search(migration.sql)
            assert found is None, (f"{migration.name}: {found.group(0)!r} blocks writes: "
                                   f"use {instead}")


@pytest.mark.parametrize(("text", "blocked"), [
    ("CREATE INDEX x ON background_jobs (a);", True),
    ("CREATE INDEX CONCURRENTLY x ON background_jobs (a);", False),
    ("CREATE INDEX x ON bgjobs_new_table (a);", False),
    ("ALTER TABLE background_jobs ADD CONSTRAINT c CHECK (a > 0);", True),
    ("ALTER TABLE background_jobs ADD CONSTRAINT c CHECK (a > 0) NOT VALID;", False),
    ("ALTER TABLE background_jobs ALTER COLUMN a SET NOT NULL;", True),
    ("ALTER TABLE background_jobs ADD COLUMN a text;", False),
])
def test_the_blocking_statement_rule_itself(text, blocked):
    assert any(p.search(text) for p, _ in BLOCKING) is blocked
