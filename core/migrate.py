"""Apply the numbered SQL files of sql/migrations once each, in order, recorded in a table.

A database bgjobs has never migrated gets sql/baseline/NNN_schema.sql instead of migrations
1..NNN (the same schema, made at once, and fitted to a host app's users table), then the
migrations after NNN like any other database.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable

import psycopg

from bgjobs.core.errors import first_line

log = logging.getLogger(__name__)

_FILENAME = re.compile(r"^(\d{3,})_[a-z0-9_]+\.sql$")
_LOCK_KEY = 0x6267_6A6F  # "bgjo": one advisory lock for all migrators


class MigrationError(RuntimeError):
    """A migration cannot be applied safely."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def migrations_dir() -> Traversable:
    """sql/migrations as installed (a folder of the checkout, or inside the wheel's package)."""
    return files("bgjobs.sql").joinpath("migrations")


def discover(directory: Traversable | None = None) -> list[Migration]:
    found = []
    directory = directory or migrations_dir()
    paths = sorted((p for p in directory.iterdir() if p.name.endswith(".sql")),
                   key=lambda p: p.name)
    for path in paths:
        match = _FILENAME.match(path.name)
        if not match:
            raise MigrationError(f"bad migration file name {path.name!r}: want NNN_name.sql")
        found.append(Migration(int(match.group(1)), path.name, path.read_text(encoding="utf-8")))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError("two migration files share a number")
    return found


def baseline() -> Migration:
    """The packaged baseline: the schema as of its number, for databases never migrated."""
    [path] = [p for p in files("bgjobs.sql").joinpath("baseline").iterdir()
              if p.name.endswith(".sql")]
    match = _FILENAME.match(path.name)
    if not match:
        raise MigrationError(f"bad baseline file name {path.name!r}: want NNN_name.sql")
    return Migration(int(match.group(1)), path.name, path.read_text(encoding="utf-8"))


def apply(conn: psycopg.Connection, directory: Traversable | None = None, *,
          users_table: str = "users") -> list[str]:
    """Apply what is missing; returns the names applied. Safe to run from many processes.

    ``users_table`` is the host app's table of users, if the database has one: a new
    background_jobs references its ``id`` (see the baseline). ``directory`` replaces the
    packaged migrations (and then no baseline is used).
    """
    migrations = discover(directory)
    start = baseline() if directory is None else None
    conn.autocommit = True
    conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
    try:
        conn.execute(
            """CREATE TABLE IF NOT EXISTS bgjobs_migrations (
                   version INTEGER PRIMARY KEY,
                   name TEXT NOT NULL,
                   checksum TEXT NOT NULL,
                   applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"""
        )
        applied = {
            row[0]: (row[1], row[2])
            for row in conn.execute("SELECT version, name, checksum FROM bgjobs_migrations")
        }
        for migration in migrations:
            if migration.version in applied:
                name, checksum = applied[migration.version]
                if checksum != migration.checksum:
                    raise MigrationError(
                        f"{migration.name} was changed after it was applied (as {name}); "
                        "migrations are forward-only: restore it and add a new file instead"
                    )
        done = []
        if not applied and start is not None:
            done.append(_apply_baseline(conn, start, migrations, users_table))
            applied = {m.version: (m.name, m.checksum) for m in migrations
                       if m.version <= start.version}
        for migration in migrations:
            if migration.version in applied:
                continue
            try:
                with conn.transaction():
                    conn.execute(migration.sql)
                    _record(conn, migration)
            except psycopg.Error as exc:
                raise MigrationError(f"{migration.name} failed: {first_line(exc)}; nothing of it "
                                     "was applied") from exc
            log.info("applied migration %s", migration.name)
            done.append(migration.name)
        return done
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))


def _apply_baseline(conn: psycopg.Connection, start: Migration, migrations: list[Migration],
                    users_table: str) -> str:
    """Make the schema at once, recording the migrations it stands for as applied."""
    if conn.execute("SELECT to_regclass('background_jobs')").fetchone() != (None,):
        raise MigrationError(
            "this database already has a background_jobs table that bgjobs did not create "
            "(the seed's hand-made table?): rename or drop it, then run `bgjobs migrate` again "
            "(docs/migrating.md)")
    try:
        with conn.transaction():
            conn.execute("SELECT set_config('bgjobs.users_table', %s, true)", (users_table,))
            conn.execute(start.sql)
            for migration in migrations:
                if migration.version <= start.version:
                    _record(conn, migration)
    except psycopg.Error as exc:
        raise MigrationError(f"creating the schema ({start.name}) failed: {first_line(exc)}; "
                             "nothing was changed") from exc
    log.info("created the schema from baseline/%s", start.name)
    return f"baseline/{start.name}"


def _record(conn: psycopg.Connection, migration: Migration) -> None:
    """Mark ``migration`` as applied, in the caller's transaction."""
    conn.execute("INSERT INTO bgjobs_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                 (migration.version, migration.name, migration.checksum))
