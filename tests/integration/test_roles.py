"""Least privilege and a schema of bgjobs's own: `bgjobs migrate` as the schema's owner (no
superuser), the services' runtime role granted by bgjobs_grant_runtime(), which can do the
store's work and nothing else. The same set-up runs the real services in tests/e2e/test_roles.py.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import psycopg
import pytest

from bgjobs.core import migrate
from bgjobs.core.errors import InvalidInput
from bgjobs.core.jobs import Attempt, Completion
from bgjobs.core.store import NewJob
from tests.conftest import store_on
from tests.roles import RolesDatabase, roles_database

#: What the runtime role must never do: DDL, other tables of the app, granting.
FORBIDDEN = [
    "DROP TABLE background_jobs",
    "ALTER TABLE background_jobs ADD COLUMN note text",
    "ALTER TABLE background_jobs DISABLE TRIGGER USER",
    "TRUNCATE background_jobs",
    "CREATE INDEX ON background_jobs (job_type)",
    "CREATE TABLE scratch (id int)",
    "CREATE TABLE public.scratch (id int)",
    "CREATE TEMPORARY TABLE scratch (id int)",
    "CREATE FUNCTION bgjobs_evil() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    "DROP FUNCTION bgjobs_cancel(uuid, integer)",
    "SELECT id FROM users",
    "SELECT * FROM invoices",
    "INSERT INTO users (email) VALUES ('mallory@example.com')",
    "DELETE FROM bgjobs_migrations",
    "SELECT * FROM bgjobs_grant_runtime('{runtime}')",
]


@pytest.fixture
def granted(server_url: str) -> Iterator[RolesDatabase]:
    """Migrated into schema bgjobs by its owner, the runtime role granted."""
    with roles_database(server_url) as db:
        with psycopg.connect(db.owner_url) as conn:
            migrate.apply(conn)
            conn.execute("SELECT * FROM bgjobs_grant_runtime(%s)", (db.runtime,))
        yield db


def test_the_owner_migrates_into_its_schema_and_jobs_reference_the_apps_users(granted):
    with psycopg.connect(granted.admin_url) as conn:
        assert conn.execute(
            "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace "
            "AND (relname LIKE 'bgjobs%%' OR relname = 'background_jobs')").fetchone() == (0,)
        assert conn.execute(
            "SELECT relowner::regrole::text FROM pg_class "
            "WHERE oid = 'bgjobs.background_jobs'::regclass").fetchone() == (granted.owner,)
        assert conn.execute(
            "SELECT confrelid::regclass::text FROM pg_constraint "
            "WHERE conname = 'background_jobs_user_id_fkey'").fetchone() == ("users",)
        assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s",
                            (granted.owner,)).fetchone() == (False,)


@pytest.mark.parametrize("statement", FORBIDDEN)
def test_the_runtime_role_cannot(granted, statement):
    with psycopg.connect(granted.runtime_url) as conn, \
            pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(statement.format(runtime=granted.runtime))


def test_the_runtime_role_does_the_stores_work_and_the_foreign_key_needs_nothing_on_users(
        granted):
    with store_on(granted.runtime_url) as store:
        user, token = store.create_user("ada", user_id=1)  # bgjobs_users.id -> users(id)
        assert store.user_for_token(token).id == 1
        job = store.insert_job(NewJob("noop", {}, user_id=1)).job
        (claimed,) = store.claim("w1", ["noop"])
        attempt = Attempt(claimed.id, "w1", claimed.attempts)
        assert store.complete([Completion(attempt, {"ok": True}, None)]) == {job.id}
        assert store.get_job(job.id).status == "complete"
        other = store.insert_job(NewJob("noop", {}, user_id=2)).job
        assert store.cancel(other.id).status == "cancelled"
        assert store.requeue(other.id).status == "pending"
        store.summary()
        # No privilege on users: the check runs as its owner, the message still names the key.
        with pytest.raises(InvalidInput, match=r'Key \(user_id\)=\(99\) is not present in '
                                               r'table "users"'):
            store.insert_job(NewJob("noop", {}, user_id=99))


def test_bgjobs_functions_find_their_tables_whatever_the_callers_search_path(granted):
    """Plain SQL from another service (or psql) with the default search_path, schema-qualified."""
    with psycopg.connect(granted.runtime_url, autocommit=True) as conn:
        conn.execute("SET search_path = public")
        # The defaults trigger reads bgjobs_job_types; bgjobs_cancel reads background_jobs.
        (job_id,) = conn.execute("INSERT INTO bgjobs.background_jobs (job_type) VALUES ('noop') "
                                 "RETURNING id").fetchone()
        assert conn.execute("SELECT status FROM bgjobs.bgjobs_cancel(%s)", (job_id,)
                            ).fetchone() == ("cancelled",)
        assert conn.execute("SELECT count(*) FROM bgjobs.bgjobs_purge_batch(now(), 10)"
                            ).fetchone() == (1,)


def test_later_migrations_keep_the_runtime_roles_grants(granted, tmp_path):
    folder = tmp_path / "migrations"
    shutil.copytree(str(migrate.migrations_dir()), folder)
    (folder / "900_more.sql").write_text(
        "CREATE TABLE bgjobs_extra (id int);\n"
        "CREATE OR REPLACE FUNCTION bgjobs_cancel(p_id uuid, p_user_id integer DEFAULT NULL)\n"
        "RETURNS SETOF background_jobs LANGUAGE sql AS $$\n"
        "    UPDATE background_jobs SET status = 'cancelled', heartbeat_at = NULL\n"
        "    WHERE id = p_id AND status IN ('pending', 'running')\n"
        "      AND (p_user_id IS NULL OR user_id = p_user_id) RETURNING * $$;\n")
    with psycopg.connect(granted.owner_url) as conn:
        assert migrate.apply(conn, folder) == ["900_more.sql"]
    with psycopg.connect(granted.runtime_url, autocommit=True) as conn:
        conn.execute("INSERT INTO bgjobs_extra VALUES (1)")
        conn.execute("SET search_path = public")  # the replaced function was pinned again
        (job_id,) = conn.execute("INSERT INTO bgjobs.background_jobs (job_type) VALUES ('noop') "
                                 "RETURNING id").fetchone()
        assert conn.execute("SELECT status FROM bgjobs.bgjobs_cancel(%s)", (job_id,)
                            ).fetchone() == ("cancelled",)


def test_the_runtime_role_cannot_migrate_and_is_told_who_can(granted, tmp_path):
    folder = tmp_path / "migrations"
    shutil.copytree(str(migrate.migrations_dir()), folder)
    (folder / "900_more.sql").write_text("ALTER TABLE background_jobs ADD COLUMN note text;")
    with psycopg.connect(granted.runtime_url) as conn, pytest.raises(
            migrate.MigrationError,
            match=r"^900_more.sql failed: must be owner of table background_jobs; nothing of it "
                  r"was applied \(run `bgjobs migrate` as the owner of bgjobs's schema"):
        migrate.apply(conn, folder)


def test_printing_the_grants_grants_nothing(server_url):
    with roles_database(server_url) as db:
        with psycopg.connect(db.owner_url, autocommit=True) as conn:
            migrate.apply(conn)
            printed = [r[0] for r in conn.execute(
                "SELECT * FROM bgjobs_grant_runtime(%s, false)", (db.runtime,))]
            assert printed[0] == f'GRANT USAGE ON SCHEMA bgjobs TO {db.runtime};'
            assert (f"GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE bgjobs.background_jobs TO "
                    f"{db.runtime};") in printed
            assert all(" ON TABLE bgjobs." in s or " ON SEQUENCE bgjobs." in s
                       or " ON FUNCTION bgjobs." in s for s in printed[1:]), printed
            assert conn.execute("SELECT count(*) FROM bgjobs_runtime_roles").fetchone() == (0,)
        with psycopg.connect(db.runtime_url) as conn, \
                pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT count(*) FROM bgjobs.background_jobs")


def test_granting_a_role_that_does_not_exist_is_refused(granted):
    with psycopg.connect(granted.owner_url) as conn, \
            pytest.raises(psycopg.errors.UndefinedObject, match="no such role: nobody_here"):
        conn.execute("SELECT * FROM bgjobs_grant_runtime('nobody_here')")


def test_the_owner_can_migrate_into_public_without_being_a_superuser(server_url):
    with roles_database(server_url, schema="public") as db:
        with psycopg.connect(db.owner_url) as conn:
            assert migrate.apply(conn)
            conn.execute("SELECT * FROM bgjobs_grant_runtime(%s)", (db.runtime,))
        with store_on(db.runtime_url) as store:
            store.insert_job(NewJob("noop", {}, user_id=1))
        with psycopg.connect(db.runtime_url) as conn, \
                pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM invoices")


def test_no_migration_needs_an_extension_or_a_superuser():
    for m in [*migrate.discover(), migrate.baseline()]:
        text = m.sql.upper()
        for needs_superuser in ("CREATE EXTENSION", "SECURITY DEFINER", "ALTER SYSTEM",
                                "LANGUAGE C", "CREATE EVENT TRIGGER", "PUBLIC."):
            assert needs_superuser not in text, (m.name, needs_superuser)


def test_a_search_path_that_would_split_bgjobss_tables_is_refused(new_database):
    url = new_database()
    with psycopg.connect(url, autocommit=True) as conn:
        migrate.apply(conn)  # into public
        conn.execute("CREATE SCHEMA elsewhere")
        conn.execute("SET search_path = elsewhere, public")
        with pytest.raises(migrate.MigrationError,
                           match="bgjobs's tables are in schema public, but search_path makes "
                                 "new tables in elsewhere"):
            migrate.apply(conn)
        assert conn.execute("SELECT to_regclass('elsewhere.bgjobs_migrations')").fetchone() == (
            None,)


def test_a_search_path_naming_no_schema_that_exists_is_refused(new_database):
    url = new_database()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET search_path = no_such_schema")
        with pytest.raises(migrate.MigrationError, match="no schema of search_path exists"):
            migrate.apply(conn)

