"""The migration runner: idempotent, safe under concurrency, refuses edited history."""

from __future__ import annotations

import shutil
import subprocess

import psycopg
import pytest

from server import migrate
from tests.conftest import url_env
from tests.procs import BGJOBS


def schema_snapshot(url: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT table_name, column_name, data_type, column_default "
            "FROM information_schema.columns WHERE table_schema = 'public' ORDER BY 1, 2"
        ).fetchall()


def test_applying_twice_changes_nothing(new_database):
    url = new_database()
    with psycopg.connect(url) as conn:
        assert migrate.apply(conn) == [m.name for m in migrate.discover()]
    before = schema_snapshot(url)
    with psycopg.connect(url) as conn:
        assert migrate.apply(conn) == []
        count = conn.execute("SELECT count(*) FROM bgjobs_migrations").fetchone()[0]
    assert schema_snapshot(url) == before
    assert count == len(migrate.discover())


def test_two_concurrent_migrate_commands_both_succeed(new_database):
    url = new_database()
    procs = [subprocess.Popen([BGJOBS, "migrate"], env=url_env(url), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert sorted(out.strip().split()[0] for out, _ in outputs) == ["applied", "database"]
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM bgjobs_migrations").fetchone()[0] == len(
            migrate.discover())


def test_a_changed_applied_file_is_refused(new_database, tmp_path):
    url = new_database()
    folder = tmp_path / "migrations"
    shutil.copytree(migrate.MIGRATIONS_DIR, folder)
    with psycopg.connect(url) as conn:
        migrate.apply(conn, folder)
    first = sorted(folder.glob("*.sql"))[0]
    first.write_text(first.read_text() + "\n-- edited\n")
    (folder / "999_later.sql").write_text("CREATE TABLE should_not_exist (id int);")
    with psycopg.connect(url) as conn, pytest.raises(migrate.MigrationError, match="changed"):
        migrate.apply(conn, folder)
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT to_regclass('should_not_exist')").fetchone() == (None,)


def test_a_badly_named_file_is_refused(tmp_path):
    (tmp_path / "init.sql").write_text("SELECT 1;")
    with pytest.raises(migrate.MigrationError, match="NNN_name.sql"):
        migrate.discover(tmp_path)


def test_a_failing_migration_leaves_nothing_behind(new_database, tmp_path):
    url = new_database()
    (tmp_path / "001_ok.sql").write_text("CREATE TABLE a (id int);")
    (tmp_path / "002_bad.sql").write_text("CREATE TABLE b (id int); SELECT no_such_function();")
    with psycopg.connect(url) as conn, pytest.raises(psycopg.errors.UndefinedFunction):
        migrate.apply(conn, tmp_path)
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT to_regclass('a') IS NOT NULL, to_regclass('b') IS NULL"
                            ).fetchone() == (True, True)
        assert conn.execute("SELECT version FROM bgjobs_migrations").fetchall() == [(1,)]
