"""The migration runner: idempotent, safe under concurrency, refuses edited history."""

from __future__ import annotations

import shutil
from unittest.mock import ANY

import psycopg
import pytest

from bgjobs.core import migrate
from tests.conftest import doc_code


def schema_snapshot(url: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT table_name, column_name, data_type, column_default "
            "FROM information_schema.columns WHERE table_schema = 'public' ORDER BY 1, 2"
        ).fetchall()


def test_applying_twice_changes_nothing(new_database):
    url = new_database()
    with psycopg.connect(url) as conn:
        assert migrate.apply(conn)
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


# The baseline, the upgrade path and a host app's database -----------------------------------

CATALOG = {
    "columns": """SELECT c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod),
                         a.attnotnull, pg_get_expr(d.adbin, d.adrelid)
                  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
                  LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
                  WHERE c.relnamespace = 'public'::regnamespace AND a.attnum > 0
                    AND NOT a.attisdropped AND c.relkind IN ('r', 'v')""",
    # Not NOT NULL (contype 'n'): Postgres 18 records them as constraints named after the table
    # they were made in, which a renamed table keeps (users_id_not_null in bgjobs_users on an
    # upgraded database); "columns" compares them by attnotnull on every version.
    "constraints": """SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)
                      FROM pg_constraint WHERE connamespace = 'public'::regnamespace
                        AND contype <> 'n'""",
    "indexes": """SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'""",
    "triggers": """SELECT tgrelid::regclass::text, tgname, pg_get_triggerdef(oid)
                   FROM pg_trigger WHERE NOT tgisinternal""",
    "functions": """SELECT proname, pg_get_functiondef(oid) FROM pg_proc
                    WHERE pronamespace = 'public'::regnamespace""",
    "views": """SELECT viewname, definition FROM pg_views WHERE schemaname = 'public'""",
    "sequences": """SELECT sequencename FROM pg_sequences WHERE schemaname = 'public'""",
    "options": """SELECT relname, reloptions FROM pg_class
                  WHERE relnamespace = 'public'::regnamespace AND reloptions IS NOT NULL""",
    "comments": """SELECT c.relname, d.objsubid, d.description FROM pg_description d
                   JOIN pg_class c ON c.oid = d.objoid AND d.classoid = 'pg_class'::regclass
                   WHERE c.relnamespace = 'public'::regnamespace
                   UNION ALL
                   SELECT p.proname, 0, d.description FROM pg_description d
                   JOIN pg_proc p ON p.oid = d.objoid AND d.classoid = 'pg_proc'::regclass
                   WHERE p.pronamespace = 'public'::regnamespace""",
}


def catalog(url: str) -> dict[str, list[tuple]]:
    """Every part of the public schema that a migration can change, in a stable order."""
    with psycopg.connect(url) as conn:
        return {part: sorted(conn.execute(query).fetchall(), key=repr)
                for part, query in CATALOG.items()}


def test_a_fresh_database_gets_the_baseline_then_the_later_migrations(new_database):
    url = new_database()
    start = migrate.baseline()
    with psycopg.connect(url) as conn:
        done = migrate.apply(conn)
        recorded = [r[0] for r in conn.execute("SELECT version FROM bgjobs_migrations "
                                               "ORDER BY version")]
    later = [m.name for m in migrate.discover() if m.version > start.version]
    assert done == [f"baseline/{start.name}", *later]
    assert recorded == [m.version for m in migrate.discover()]


def test_a_database_migrated_before_the_baseline_upgrades_to_the_same_schema(new_database,
                                                                            tmp_path):
    start = migrate.baseline()
    older = tmp_path / "older"
    older.mkdir()
    for m in migrate.discover():
        if m.version < start.version:  # what the previous release shipped
            (older / m.name).write_text(m.sql)
    upgraded, fresh = new_database(), new_database()
    with psycopg.connect(upgraded) as conn:
        migrate.apply(conn, older)
        conn.execute("INSERT INTO users (name) VALUES ('kept')")
        user_id = conn.execute("SELECT id FROM users").fetchone()[0]
        conn.execute("INSERT INTO background_jobs (job_type, user_id) VALUES ('noop', %s)",
                     (user_id,))
        conn.commit()
        upgrade = migrate.apply(conn)
    assert upgrade[0] == f"{start.version:03d}_bgjobs_names.sql"
    with psycopg.connect(fresh) as conn:
        migrate.apply(conn)
    expected = catalog(fresh)
    assert all(expected.values())  # a comparison of nothing would prove nothing
    assert catalog(upgraded) == expected
    with psycopg.connect(upgraded) as conn:
        assert conn.execute("SELECT u.name FROM background_jobs j JOIN bgjobs_users u "
                            "ON u.id = j.user_id").fetchall() == [("kept",)]


HOST_SCHEMA = """
CREATE TABLE users (
    id SERIAL PRIMARY KEY,
    email TEXT NOT NULL UNIQUE CHECK (email LIKE '%@%'),
    password_hash TEXT
);
CREATE TABLE api_tokens (id SERIAL PRIMARY KEY, user_id INTEGER REFERENCES users(id));
CREATE TABLE jobs (id SERIAL PRIMARY KEY, title TEXT);
CREATE INDEX idx_jobs_status ON jobs (title);
INSERT INTO users (email) VALUES ('ada@example.com'), ('grace@example.com');
"""


def host_tables(url: str, tables: tuple[str, ...] = ("users", "api_tokens", "jobs")
                ) -> dict[str, list[tuple]]:
    """The host app's own tables: columns, constraints, indexes, and its users."""
    names = list(tables)
    with psycopg.connect(url) as conn:
        return {
            "columns": conn.execute(
                "SELECT table_name, column_name, data_type, column_default, is_nullable "
                "FROM information_schema.columns WHERE table_name = ANY(%s) ORDER BY 1, 2",
                (names,)).fetchall(),
            "constraints": conn.execute(
                "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) "
                "FROM pg_constraint WHERE conrelid = ANY(%s::regclass[]) ORDER BY 1, 2",
                (names,)).fetchall(),
            "indexes": conn.execute(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = ANY(%s) "
                "ORDER BY 1", (names,)).fetchall(),
            "users": conn.execute("SELECT * FROM users ORDER BY id").fetchall(),
        }


def test_a_host_apps_database_keeps_its_tables_and_jobs_reference_its_users(new_database):
    url = new_database()
    with psycopg.connect(url) as conn:
        conn.execute(HOST_SCHEMA)
    before = host_tables(url)
    with psycopg.connect(url) as conn:
        migrate.apply(conn)
    assert host_tables(url) == before
    with psycopg.connect(url) as conn:
        refs = dict(conn.execute(
            "SELECT conname, confrelid::regclass::text FROM pg_constraint WHERE conname IN "
            "('background_jobs_user_id_fkey', 'bgjobs_users_id_fkey')").fetchall())
        assert refs == {"background_jobs_user_id_fkey": "users",
                        "bgjobs_users_id_fkey": "users"}
        conn.execute("INSERT INTO background_jobs (job_type, user_id) VALUES ('noop', 2)")
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            conn.execute("INSERT INTO background_jobs (job_type, user_id) VALUES ('noop', 99)")


#: (an app's schema bgjobs cannot fit, the refusal's message as a regex); also tests/e2e/test_cli.py
REFUSALS = [
    ("CREATE TABLE users (id UUID PRIMARY KEY)", "has no integer id column .found uuid"),
    ("CREATE TABLE users (id INTEGER)", "is not unique"),
    ("CREATE TABLE users (uid INTEGER PRIMARY KEY)", "has no integer id column .found none"),
    ("CREATE TABLE background_jobs (id UUID PRIMARY KEY, job_type TEXT)",
     "already has a background_jobs table that bgjobs did not create"),
]


@pytest.mark.parametrize(("schema", "message"), REFUSALS)
def test_a_database_bgjobs_cannot_fit_is_refused_and_left_alone(new_database, schema, message):
    url = new_database()
    with psycopg.connect(url) as conn:
        conn.execute(schema)
    with psycopg.connect(url) as conn, pytest.raises(migrate.MigrationError, match=message):
        migrate.apply(conn)
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM bgjobs_migrations").fetchone() == (0,)
        assert conn.execute("SELECT to_regclass('bgjobs_users')").fetchone() == (None,)


def test_the_users_table_can_be_named(new_database):
    url = new_database()
    with psycopg.connect(url) as conn:
        conn.execute("CREATE SCHEMA app; CREATE TABLE app.accounts (id BIGSERIAL PRIMARY KEY)")
    with psycopg.connect(url) as conn:
        migrate.apply(conn, users_table="app.accounts")
        assert conn.execute(
            "SELECT confrelid::regclass::text FROM pg_constraint "
            "WHERE conname = 'background_jobs_user_id_fkey'").fetchone() == ("app.accounts",)


# Which users table jobs belong to ------------------------------------------------------------

#: What `bgjobs migrate` says of a database without the app's users table.
NO_USERS = ('jobs belong to bgjobs_users(id) (no table "users" here; see docs/dba.md to use '
            "your app's)")


def repoint_sql() -> str:
    """The SQL docs/dba.md gives to re-point jobs at the app's users table."""
    return doc_code("dba.md", "### Re-pointing jobs at your users table", "sql")


@pytest.mark.parametrize(("schema", "line"), [
    (None, NO_USERS),
    (HOST_SCHEMA, "jobs belong to users(id)"),
])
def test_the_binding_is_read_from_the_foreign_key(new_database, schema, line):
    url = new_database()
    with psycopg.connect(url, autocommit=True) as conn:
        if schema:
            conn.execute(schema)
        migrate.apply(conn)
        assert migrate.users_binding(conn) == (line, None)
        assert migrate.apply(conn) == []
        assert migrate.users_binding(conn) == (line, None)


#: (an app's schema, BGJOBS_USERS_TABLE naming a table jobs cannot reference, the refusal)
EXPLICIT_REFUSALS = [
    ("", "acounts", 'BGJOBS_USERS_TABLE is "acounts", but this database has no such table'),
    (HOST_SCHEMA, "acounts", "has no such table"),
    ("CREATE TABLE accounts (id UUID PRIMARY KEY)", "accounts", "no integer id column .found uuid"),
    ("CREATE TABLE accounts (uid INT PRIMARY KEY)", "accounts", "no integer id column .found none"),
    ("CREATE TABLE accounts (id INTEGER)", "accounts", "its id column is not unique"),
]


@pytest.mark.parametrize(("schema", "table", "message"), EXPLICIT_REFUSALS)
@pytest.mark.parametrize("migrated_before", [False, True])
def test_an_explicit_users_table_jobs_cannot_reference_is_refused_changing_nothing(
        new_database, schema, table, message, migrated_before):
    url = new_database()
    with psycopg.connect(url, autocommit=True) as conn:
        if schema:
            conn.execute(schema)
        if migrated_before:  # an installed bgjobs, with the last migration still to apply
            migrate.apply(conn)
            conn.execute("DELETE FROM bgjobs_migrations WHERE version = %s",
                         (migrate.discover()[-1].version,))
    before = catalog(url), recorded(url)
    with psycopg.connect(url) as conn, pytest.raises(migrate.MigrationError, match=message):
        migrate.apply(conn, users_table=table, users_table_set=True)
    assert (catalog(url), recorded(url)) == before


def recorded(url: str) -> list[tuple] | None:
    """The migrations recorded as applied (None: bgjobs_migrations does not exist)."""
    with psycopg.connect(url) as conn:
        if conn.execute("SELECT to_regclass('bgjobs_migrations')").fetchone() == (None,):
            return None
        return conn.execute("SELECT version, checksum FROM bgjobs_migrations ORDER BY 1"
                            ).fetchall()


def test_the_default_users_table_is_not_required(new_database):
    url = new_database()
    with psycopg.connect(url) as conn:
        assert migrate.apply(conn, users_table="users", users_table_set=False)
        assert migrate.users_binding(conn)[0] == NO_USERS


def test_an_explicit_users_table_that_exists_is_bound(new_database):
    url = new_database()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY)")
        migrate.apply(conn, users_table="accounts", users_table_set=True)
        assert migrate.users_binding(conn, "accounts", users_table_set=True) == (
            "jobs belong to accounts(id)", None)


def test_a_users_table_made_after_migrating_gets_a_warning_until_the_documented_sql_repoints(
        new_database):
    url = new_database()
    with psycopg.connect(url, autocommit=True) as conn:
        migrate.apply(conn)  # a deploy script ran bgjobs migrate before the app made its tables
        conn.execute(HOST_SCHEMA)  # ada (1), grace (2)
        for explicit in (False, True):
            line, warning = migrate.users_binding(conn, "users", users_table_set=explicit)
            assert line == "jobs belong to bgjobs_users(id)"
            assert warning == ('jobs belong to bgjobs_users(id), but this database now has your '
                               'users table "users"; bgjobs never re-points jobs itself: see '
                               '"Re-pointing jobs at your users table" in docs/dba.md')
        assert migrate.apply(conn) == []
        assert migrate.apply(conn, users_table="users", users_table_set=True) == []
        assert migrate.users_binding(conn)[0] == "jobs belong to bgjobs_users(id)"  # as it was
        conn.execute("INSERT INTO bgjobs_users (id, name) VALUES (2, 'grace')")
        conn.execute("INSERT INTO background_jobs (job_type, user_id) VALUES ('noop', 2), "
                     "('noop', NULL)")
        conn.execute(repoint_sql())
        assert migrate.users_binding(conn) == ("jobs belong to users(id)", None)
        assert conn.execute(
            "SELECT confrelid::regclass::text FROM pg_constraint "
            "WHERE conname = 'bgjobs_users_id_fkey'").fetchone() == ("users",)
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            conn.execute("INSERT INTO background_jobs (job_type, user_id) VALUES ('noop', 99)")


def test_the_documented_repointing_changes_nothing_while_a_job_names_no_user_of_the_app(
        new_database):
    url = new_database()
    with psycopg.connect(url, autocommit=True) as conn:
        migrate.apply(conn)
        conn.execute("INSERT INTO bgjobs_users (name) SELECT g::text FROM generate_series(1, 5) g")
        conn.execute("INSERT INTO background_jobs (job_type, user_id) VALUES ('noop', 5)")
        conn.execute(HOST_SCHEMA)  # ids 1 and 2: job 5 is nobody there
        orphans = repoint_sql().split(";")[1]  # the first query: what to fix first
        assert conn.execute(orphans).fetchall() == [
            ("background_jobs", ANY, 5), *[("bgjobs_users", str(i), i) for i in (3, 4, 5)]]
    before = catalog(url)
    refused = pytest.raises(psycopg.errors.ForeignKeyViolation)
    with psycopg.connect(url, autocommit=True) as conn, refused:
        conn.execute(repoint_sql())
    assert catalog(url) == before
    with psycopg.connect(url) as conn:
        assert migrate.users_binding(conn)[0] == "jobs belong to bgjobs_users(id)"


def test_an_explicit_users_table_other_than_the_bound_one_gets_a_warning(new_database):
    url = new_database()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(HOST_SCHEMA)
        migrate.apply(conn)
        conn.execute("CREATE TABLE accounts (id BIGINT PRIMARY KEY)")
        assert migrate.users_binding(conn, "accounts") == ("jobs belong to users(id)", None)
        line, warning = migrate.users_binding(conn, "accounts", users_table_set=True)
        assert line == "jobs belong to users(id)"
        assert warning is not None and warning.startswith(
            'jobs belong to users(id), but BGJOBS_USERS_TABLE is "accounts"; bgjobs never '
            "re-points jobs itself")


@pytest.mark.parametrize(("later", "line"), [
    ("CREATE TABLE users (id UUID PRIMARY KEY)",
     'jobs belong to bgjobs_users(id) ("users" has no integer, unique id; see docs/dba.md to use '
     "your app's)"),
    ("ALTER TABLE background_jobs DROP CONSTRAINT background_jobs_user_id_fkey",
     "jobs belong to no users table: background_jobs.user_id has no foreign key "
     "(see docs/dba.md)"),
])
def test_what_changed_after_migrating_is_said_without_a_warning(new_database, later, line):
    url = new_database()
    with psycopg.connect(url, autocommit=True) as conn:
        migrate.apply(conn)
        conn.execute(later)
        assert migrate.users_binding(conn) == (line, None)
