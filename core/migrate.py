"""Apply the numbered SQL files of sql/migrations once each, in order, recorded in a table.

A database bgjobs has never migrated gets sql/baseline/NNN_schema.sql instead of migrations
1..NNN (the same schema, made at once, and fitted to a host app's users table), then the
migrations after NNN like any other database.

``users_binding`` reads back which table background_jobs.user_id references, for
`bgjobs migrate` to say on every run.
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
_INTEGER_IDS = ("integer", "smallint", "bigint")  # what background_jobs.user_id can reference


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
          users_table: str = "users", users_table_set: bool = False) -> list[str]:
    """Apply what is missing; returns the names applied. Safe to run from many processes.

    ``users_table`` is the host app's table of users, if the database has one: a new
    background_jobs references its ``id`` (see the baseline). ``users_table_set``: that name
    was given on purpose (BGJOBS_USERS_TABLE), so a database without such a table, or whose
    ``id`` jobs cannot reference, is refused before anything changes. ``directory`` replaces
    the packaged migrations (and then no baseline is used).
    """
    _require_server_version(conn)
    migrations = discover(directory)
    start = baseline() if directory is None else None
    conn.autocommit = True
    conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
    try:
        if users_table_set:
            _require_users_table(conn, users_table)
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


@dataclass(frozen=True)
class _UsersTable:
    """What the catalog says of a would-be users table."""

    oid: int | None  # None: no such table
    id_type: str | None  # None: no id column
    unique: bool

    @property
    def fits(self) -> bool:
        """background_jobs.user_id can reference its id (what the baseline checks)."""
        return self.id_type in _INTEGER_IDS and self.unique


def _users_table(conn: psycopg.Connection, name: str) -> _UsersTable:
    row = conn.execute(
        """SELECT t.oid::oid, format_type(a.atttypid, a.atttypmod),
                  EXISTS (SELECT FROM pg_index i WHERE i.indrelid = t.oid AND i.indisunique
                          AND i.indnkeyatts = 1 AND i.indpred IS NULL
                          AND i.indkey[0] = a.attnum)
           FROM (SELECT to_regclass(%s) AS oid) t
           LEFT JOIN pg_attribute a ON a.attrelid = t.oid AND a.attname = 'id'
                                   AND NOT a.attisdropped""", (name,)).fetchone()
    assert row is not None
    return _UsersTable(*row)


def _require_users_table(conn: psycopg.Connection, name: str) -> None:
    """Refuse, changing nothing, a users table named on purpose that jobs cannot reference."""
    found = _users_table(conn, name)
    if found.oid is None:
        problem = ("this database has no such table: fix the name, or create your app's tables "
                   "before running `bgjobs migrate`")
    elif found.id_type not in _INTEGER_IDS:
        problem = f"it has no integer id column (found {found.id_type or 'none'})"
    elif not found.unique:
        problem = "its id column is not unique (no primary key or unique constraint on id)"
    else:
        return
    raise MigrationError(f'BGJOBS_USERS_TABLE is "{name}", but {problem}; nothing was changed')


def users_binding(conn: psycopg.Connection, users_table: str = "users", *,
                  users_table_set: bool = False) -> tuple[str, str | None]:
    """Which table background_jobs.user_id references, read from pg_constraint: one line to
    print, and a warning (or None) when that is not the app's users table it could be.

    bgjobs never re-points the foreign key itself: docs/dba.md says how.
    """
    row = conn.execute(
        """SELECT c.confrelid::oid, c.confrelid::regclass::text, r.attname,
                  c.confrelid = to_regclass('bgjobs_users')
           FROM pg_constraint c
           JOIN pg_attribute k ON k.attrelid = c.conrelid AND k.attnum = c.conkey[1]
           JOIN pg_attribute r ON r.attrelid = c.confrelid AND r.attnum = c.confkey[1]
           WHERE c.conrelid = to_regclass('background_jobs') AND c.contype = 'f'
             AND cardinality(c.conkey) = 1 AND k.attname = 'user_id'
           ORDER BY c.conname LIMIT 1""").fetchone()
    if row is None:
        return ("jobs belong to no users table: background_jobs.user_id has no foreign key "
                "(see docs/dba.md)", None)
    oid, table, column, own = row
    line = f"jobs belong to {table}({column})"
    app = _users_table(conn, users_table)
    repoint = ('; bgjobs never re-points jobs itself: see "Re-pointing jobs at your users '
               'table" in docs/dba.md')
    if own and app.fits:
        return line, (f'{line}, but this database now has your users table "{users_table}"'
                      f"{repoint}")
    if own:
        why = (f'no table "{users_table}" here' if app.oid is None
               else f'"{users_table}" has no integer, unique id')
        return f"{line} ({why}; see docs/dba.md to use your app's)", None
    if users_table_set and app.fits and app.oid != oid:
        return line, f'{line}, but BGJOBS_USERS_TABLE is "{users_table}"{repoint}'
    return line, None


#: The oldest Postgres bgjobs runs on (NULLS NOT DISTINCT): README, "Postgres versions".
MIN_SERVER_VERSION = 150000


def _require_server_version(conn: psycopg.Connection) -> None:
    """One line instead of a syntax error halfway: the server is older than bgjobs supports."""
    version = conn.info.server_version
    if version < MIN_SERVER_VERSION:
        raise MigrationError(
            f"bgjobs needs Postgres {MIN_SERVER_VERSION // 10000} or later and this server is "
            f"{version // 10000}.{version % 10000}: upgrade it (pg_upgrade) first; nothing was "
            "changed")
