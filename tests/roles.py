"""A database set up as a DBA would for least privilege (docs/operations.md, "Roles and
privileges"): the host app's tables in public, owned by the app's role; bgjobs's tables in
schema ``bgjobs``, owned by a migration role that is no superuser; the services' runtime role
with only what `bgjobs grant` gives it. Roles are cluster-wide: each set has unique names and is
dropped afterwards."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg
from psycopg.conninfo import make_conninfo

HOST_SCHEMA = """
CREATE TABLE users (id SERIAL PRIMARY KEY, email TEXT NOT NULL UNIQUE);
CREATE TABLE invoices (id SERIAL PRIMARY KEY, user_id INTEGER REFERENCES users(id),
                       amount NUMERIC NOT NULL);
INSERT INTO users (email) VALUES ('ada@example.com'), ('grace@example.com');
INSERT INTO invoices (user_id, amount) VALUES (1, 42);
"""


@dataclass(frozen=True)
class RolesDatabase:
    admin_url: str  # a superuser, for set-up and inspection only
    app_owner: str  # owns the host app's tables (and the database)
    owner: str  # owns schema bgjobs: runs `bgjobs migrate` and `bgjobs grant`
    runtime: str  # what the API, the events service and the workers run as

    def url(self, role: str) -> str:
        return make_conninfo(self.admin_url, user=role)

    @property
    def owner_url(self) -> str:
        return self.url(self.owner)

    @property
    def runtime_url(self) -> str:
        return self.url(self.runtime)


@contextmanager
def roles_database(server_url: str, schema: str = "bgjobs") -> Iterator[RolesDatabase]:
    """A new database with the host app's tables and the three roles; dropped afterwards.

    ``schema``: where bgjobs's tables go, through the roles' search_path (``public``: the
    default search_path, and the owner gets CREATE on public instead of a schema of its own).
    """
    tag = uuid.uuid4().hex[:8]
    name = f"bgjobs_test_roles_{tag}"
    app_owner, owner, runtime = (f"bgjobs_t{tag}_{r}" for r in ("app", "owner", "runtime"))
    with psycopg.connect(server_url, autocommit=True) as conn:
        for role in (app_owner, owner, runtime):
            conn.execute(f'CREATE ROLE "{role}" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE')
        conn.execute(f'CREATE DATABASE "{name}" OWNER "{app_owner}"')
    url = make_conninfo(server_url, dbname=name)
    db = RolesDatabase(url, app_owner, owner, runtime)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            # Postgres 14 and older let every role create tables in public: not the runtime's.
            conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
            conn.execute(f'REVOKE TEMPORARY ON DATABASE "{name}" FROM PUBLIC')
            if schema == "public":
                conn.execute(f'GRANT CREATE ON SCHEMA public TO "{owner}"')
            else:
                conn.execute(f'CREATE SCHEMA "{schema}" AUTHORIZATION "{owner}"')
                for role in (owner, runtime):
                    conn.execute(f'ALTER ROLE "{role}" IN DATABASE "{name}" '
                                 f'SET search_path = "{schema}", public')
        with psycopg.connect(db.url(app_owner), autocommit=True) as conn:
            conn.execute(HOST_SCHEMA)
            # What the migration role needs of the app: to reference users(id), nothing else.
            conn.execute(f'GRANT REFERENCES (id) ON users TO "{owner}"')
        yield db
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            for role in (runtime, owner, app_owner):
                conn.execute(f'DROP ROLE IF EXISTS "{role}"')
