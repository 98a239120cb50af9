"""The migration runner: idempotent, safe under concurrency, refuses edited history."""

from __future__ import annotations

import shutil

import psycopg
import pytest

from bgjobs.core import migrate


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


def test_a_changed_applied_file_is_refused(new_database, tmp_path):
    url = new_database()
    folder = tmp_path / "migrations"
    shutil.copytree(str(migrate.migrations_dir()), folder)
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
    refused = pytest.raises(migrate.MigrationError, match="002_bad.sql failed: .*no_such_funct")
    with psycopg.connect(url) as conn, refused:
        migrate.apply(conn, tmp_path)
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT to_regclass('a') IS NOT NULL, to_regclass('b') IS NULL"
                            ).fetchone() == (True, True)
        assert conn.execute("SELECT version FROM bgjobs_migrations").fetchall() == [(1,)]
