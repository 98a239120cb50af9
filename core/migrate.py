"""Apply the numbered SQL files of sql/migrations once each, in order, recorded in a table.

A database bgjobs has never migrated gets sql/baseline/NNN_schema.sql instead of migrations
1..NNN (the same schema, made at once, and fitted to a host app's users table), then the
migrations after NNN like any other database.

Each migration runs in a transaction of its own under a short ``lock_timeout``: when a lock it
needs is held (a long transaction on background_jobs), it gives the lock up, so the app's
queries never queue behind it for longer than that, and tries again later, saying who holds the
lock; after its last try it gives up in one line, having applied nothing of that migration. A
file whose first line is ``-- bgjobs:no-transaction`` holds one statement run outside a
transaction (``CREATE INDEX CONCURRENTLY``); see ``Migration.transactional``.

The advisory lock that keeps two migrators apart is session-level: `bgjobs migrate` needs a
direct (or session-mode pooler) connection, never a transaction-mode pooler.

After any migration, the runtime roles recorded by ``bgjobs_grant_runtime`` (013) get their
grants again, and bgjobs's functions that read its tables get its schema pinned as their
search_path, so later migrations keep both (docs/operations.md, "Roles and privileges").

``users_binding`` reads back which table background_jobs.user_id references, for
`bgjobs migrate` to say on every run.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import LiteralString, cast

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from bgjobs.core.errors import BgjobsError, first_line

log = logging.getLogger(__name__)

_FILENAME = re.compile(r"^(\d{3,})_[a-z0-9_]+\.sql$")
_LOCK_KEY = 0x6267_6A6F  # "bgjo": one advisory lock for all migrators
_INTEGER_IDS = ("integer", "smallint", "bigint")  # what background_jobs.user_id can reference
#: The first line of a migration that must run outside a transaction (one statement).
NO_TRANSACTION = "-- bgjobs:no-transaction"
_CONCURRENT_INDEX = re.compile(
    r"CREATE\s+(?:UNIQUE\s+)?INDEX\s+CONCURRENTLY\s+(?:IF\s+NOT\s+EXISTS\s+)?"
    r'("?)([A-Za-z_][A-Za-z0-9_$]*)\1', re.IGNORECASE)
#: Functions that read no table and run on every enqueue or update: no pinned search_path
#: (a function's own SET costs a GUC save and restore per call).
_UNPINNED = ("bgjobs_touch", "bgjobs_notify_inserted", "bgjobs_notify_updated",
             "bgjobs_notify_auth", "bgjobs_progress_payload", "bgjobs_schedules_check")


class MigrationError(BgjobsError, RuntimeError):
    """A migration cannot be applied safely."""


@dataclass(frozen=True)
class LockPolicy:
    """How a migration waits for the locks it needs (BGJOBS_MIGRATE_LOCK_TIMEOUT, _TRIES)."""

    #: Seconds each try waits for a lock before giving it up (the app's queries queued behind
    #: the migration wait at most this long).
    timeout: float = 3.0
    #: Tries in all before giving up.
    tries: int = 5
    #: Pause after the first failed try, doubled after each next one (at most 10 s).
    backoff: float = 1.0

    def pause(self, failed: int) -> float:
        return min(10.0, self.backoff * 2 ** (failed - 1))


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: LiteralString  # the package's own file (or the host's migrations folder), not input

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    @property
    def transactional(self) -> bool:
        """False for a file starting with ``-- bgjobs:no-transaction``: its one statement runs
        on its own (CREATE INDEX CONCURRENTLY cannot run inside a transaction block)."""
        return self.sql.split("\n", 1)[0].strip() != NO_TRANSACTION

    @property
    def concurrent_indexes(self) -> list[str]:
        """Names of the indexes it builds concurrently (an interrupted build leaves one INVALID)."""
        return [m.group(2) if m.group(1) else m.group(2).lower()
                for m in _CONCURRENT_INDEX.finditer(self.sql)]


def _statements(text: str) -> list[str]:
    """The statements of a no-transaction migration: comment lines dropped, split at ';'."""
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    return [part.strip() for part in body.split(";") if part.strip()]


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
        migration = Migration(int(match.group(1)), path.name,
                              cast(LiteralString, path.read_text(encoding="utf-8")))
        if not migration.transactional and (len(_statements(migration.sql)) != 1
                                            or "$" in migration.sql):
            raise MigrationError(f"{path.name} is marked {NO_TRANSACTION!r} but does not hold "
                                 "exactly one statement (without $-quotes): each statement "
                                 "run outside a transaction needs a file of its own")
        found.append(migration)
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
    return Migration(int(match.group(1)), path.name,
                     cast(LiteralString, path.read_text(encoding="utf-8")))


def apply(conn: psycopg.Connection, directory: Traversable | None = None, *,
          users_table: str = "users", users_table_set: bool = False,
          locks: LockPolicy | None = None) -> list[str]:
    """Apply what is missing; returns the names applied. Safe to run from many processes.

    ``users_table`` is the host app's table of users, if the database has one: a new
    background_jobs references its ``id`` (see the baseline). ``users_table_set``: that name
    was given on purpose (BGJOBS_USERS_TABLE), so a database without such a table, or whose
    ``id`` jobs cannot reference, is refused before anything changes. ``directory`` replaces
    the packaged migrations (and then no baseline is used). ``locks``: how each migration
    waits for its locks (see LockPolicy).
    """
    _require_server_version(conn)
    migrations = discover(directory)
    start = baseline() if directory is None else None
    locks = locks or LockPolicy()
    conn.autocommit = True
    conn.add_notice_handler(_log_warning)
    _take_migrate_lock(conn)
    try:
        if users_table_set:
            _require_users_table(conn, users_table)
        if not _require_one_schema(conn):
            conn.execute(
                """CREATE TABLE bgjobs_migrations (
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
            done.append(_apply_baseline(conn, start, migrations, users_table, locks))
            applied = {m.version: (m.name, m.checksum) for m in migrations
                       if m.version <= start.version}
        for migration in migrations:
            if migration.version in applied:
                continue
            if migration.transactional:
                _with_retries(conn, migration.name, locks,
                              partial(_apply_in_transaction, conn, migration, locks))
            else:
                _with_retries(conn, migration.name, locks,
                              partial(_apply_alone, conn, migration, locks),
                              cleanup=partial(_drop_invalid_indexes, conn, migration, locks))
            log.info("applied migration %s", migration.name)
            done.append(migration.name)
        if done:
            _after_migrations(conn)
        return done
    except psycopg.Error as exc:
        raise MigrationError(f"cannot migrate: {first_line(exc)}{_hint(exc)}") from exc
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
        conn.remove_notice_handler(_log_warning)


def _take_migrate_lock(conn: psycopg.Connection) -> None:
    """The migrators' advisory lock, tried a statement at a time rather than waited for in one:
    a statement waiting holds a snapshot, and the other migrator's CREATE INDEX CONCURRENTLY
    waits for every older snapshot to end (a deadlock Postgres breaks by failing one of them)."""
    said = False
    while not conn.execute("SELECT pg_try_advisory_lock(%s)", (_LOCK_KEY,)).fetchone()[0]:  # type: ignore[index]
        if not said:
            log.info("migrate: waiting for another bgjobs migrate to finish")
            said = True
        time.sleep(0.2)


def _log_warning(diag: psycopg.errors.Diagnostic) -> None:
    """A migration's WARNING (e.g. old rows a new check cannot validate yet) is logged."""
    if diag.severity_nonlocalized == "WARNING":
        log.warning("%s (hint: %s)", diag.message_primary, diag.message_hint)


def _hint(exc: psycopg.Error) -> str:
    if isinstance(exc, psycopg.errors.InsufficientPrivilege):
        return (" (run `bgjobs migrate` as the owner of bgjobs's schema and tables, not the "
                "services' runtime role: docs/operations.md, \"Roles and privileges\")")
    return ""


def _require_one_schema(conn: psycopg.Connection) -> bool:
    """Whether bgjobs_migrations exists; refuses a search_path that would put new bgjobs tables
    beside, not with, the existing ones."""
    row = conn.execute(
        """SELECT n.nspname, current_schema() FROM pg_class c
           JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE c.oid = to_regclass('bgjobs_migrations')""").fetchone()
    if row is None:
        if conn.execute("SELECT current_schema()").fetchone() == (None,):
            raise MigrationError(
                "no schema of search_path exists (SHOW search_path): create bgjobs's schema "
                "first, or fix search_path (docs/operations.md, \"Schema\")")
        return False
    found, current = row
    if found != current:
        raise MigrationError(
            f"bgjobs's tables are in schema {found}, but search_path makes new tables in "
            f"{current}: put {found} first in search_path (docs/operations.md, \"Schema\"); "
            "nothing was changed")
    return True


def _apply_in_transaction(conn: psycopg.Connection, migration: Migration,
                          locks: LockPolicy) -> None:
    with conn.transaction():
        _set_lock_timeout(conn, locks, local=True)
        conn.execute(migration.sql)
        _record(conn, migration)


def _apply_alone(conn: psycopg.Connection, migration: Migration, locks: LockPolicy) -> None:
    """A no-transaction migration: its one statement, then its record (the statement must be
    safe to run again, e.g. IF NOT EXISTS, should migrate stop in between)."""
    _drop_invalid_indexes(conn, migration, locks)
    _set_lock_timeout(conn, locks, local=False)
    try:
        conn.execute(migration.sql)
    finally:
        conn.execute("RESET lock_timeout")
    invalid = _invalid_indexes(conn, migration)
    if invalid:  # IF NOT EXISTS skips an invalid index of the same name: never record that
        raise MigrationError(f"{migration.name} left the index {invalid[0]} invalid")
    _record(conn, migration)


def _set_lock_timeout(conn: psycopg.Connection, locks: LockPolicy, *, local: bool) -> None:
    conn.execute("SELECT set_config('lock_timeout', %s, %s)",
                 (f"{max(1, round(locks.timeout * 1000))}ms", local))


def _invalid_indexes(conn: psycopg.Connection, migration: Migration) -> list[str]:
    names = migration.concurrent_indexes
    if not names:
        return []
    return [r[0] for r in conn.execute(
        """SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
           WHERE c.relnamespace = current_schema()::regnamespace AND c.relname = ANY(%s)
             AND NOT i.indisvalid ORDER BY 1""", (names,))]


def _drop_invalid_indexes(conn: psycopg.Connection, migration: Migration,
                          locks: LockPolicy) -> None:
    """Drop what an interrupted CREATE INDEX CONCURRENTLY of ``migration`` left (an INVALID
    index, which writes keep updating and a re-run with IF NOT EXISTS would keep)."""
    for name in _invalid_indexes(conn, migration):
        log.warning("migrate: %s: dropping the invalid index %s left by an interrupted build",
                    migration.name, name)
        _set_lock_timeout(conn, locks, local=False)
        try:
            conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(
                sql.Identifier(name)))
        finally:
            conn.execute("RESET lock_timeout")


def _with_retries(conn: psycopg.Connection, name: str, locks: LockPolicy,
                  run: Callable[[], None], cleanup: Callable[[], None] | None = None) -> None:
    """``run`` (one migration, all or nothing), tried again while a lock it needs is held
    elsewhere; each wait is logged with the session holding the lock."""
    for tries in range(1, locks.tries + 1):
        watch = _BlockerWatch(conn, locks.timeout)
        try:
            with watch:
                run()
            return
        except psycopg.errors.LockNotAvailable as exc:
            blocker = watch.seen or "a lock held by another session"
            left = ""
            if cleanup is not None:
                try:
                    cleanup()
                except psycopg.Error as why:  # the next try (or run) drops it first
                    log.warning("migrate: %s: %s", name, first_line(why))
                    left = (" (but for an INVALID index, which the next `bgjobs migrate` "
                            "drops first)")
            if tries == locks.tries:
                raise MigrationError(
                    f"{name}: gave up after {tries} tries of {locks.timeout:g}s waiting for "
                    f"{blocker}; nothing of it was applied{left}: end that session or run "
                    "`bgjobs migrate` again later") from exc
            pause = locks.pause(tries)
            log.warning("migrate: %s: waiting for %s; try %d of %d in %.0fs", name, blocker,
                        tries + 1, locks.tries, pause)
            time.sleep(pause)
        except psycopg.Error as exc:
            raise MigrationError(f"{name} failed: {first_line(exc)}; nothing of it "
                                 f"was applied{_hint(exc)}") from exc


class _BlockerWatch:
    """While a migration runs, a second connection notes who holds the lock it waits for
    (pg_blocking_pids only answers while the wait lasts), for the retry's log line."""

    INTERVAL = 0.1

    def __init__(self, conn: psycopg.Connection, timeout: float) -> None:
        self.pid = conn.info.backend_pid
        #: Most migrations end in milliseconds: only a slow one gets a watching connection.
        self.delay = min(0.3, timeout / 4)
        self.conninfo = make_conninfo(conn.info.dsn, password=conn.info.password or None)
        self.seen: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="migrate-lock-watch",
                                        daemon=True)

    def __enter__(self) -> _BlockerWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        if self._stop.wait(self.delay):
            return
        try:
            with psycopg.connect(self.conninfo, autocommit=True, connect_timeout=5,
                                 application_name="bgjobs migrate (lock watch)") as watcher:
                while not self._stop.wait(self.INTERVAL):
                    row = watcher.execute(_BLOCKER, (self.pid,)).fetchone()
                    if row is not None:
                        self.seen = _describe_blocker(*row)
        except psycopg.Error as exc:  # the migration goes on, its log line just says less
            log.debug("migrate: cannot watch for lock holders: %s", first_line(exc))


_BLOCKER = """
SELECT coalesce(l.relation::regclass::text, l.locktype), b.pid, a.state,
       extract(epoch FROM now() - a.xact_start)::int, a.query
FROM pg_locks l
CROSS JOIN LATERAL unnest(pg_blocking_pids(l.pid)) AS b(pid)
LEFT JOIN pg_stat_activity a ON a.pid = b.pid
WHERE l.pid = %s AND NOT l.granted
LIMIT 1
"""


def _describe_blocker(what: str, pid: int, state: str | None, age: int | None,
                      query: str | None) -> str:
    """'a lock on background_jobs held by pid 42 (idle in transaction for 12s: SELECT ...)'."""
    if what == "virtualxid":  # CREATE INDEX CONCURRENTLY waits for older transactions to end
        head = f"the transaction of pid {pid} to end"
    else:
        head = f"a lock on {what} held by pid {pid}"
    if state is None:
        return f"{head} (its query is hidden from this role)"
    text = " ".join((query or "").split())
    text = text if len(text) <= 80 else text[:77] + "..."
    since = f" for {age}s" if age is not None else ""
    return f"{head} ({state}{since}: {text})"


def _after_migrations(conn: psycopg.Connection) -> None:
    """Keep what a later migration could undo: pinned search_paths, runtime roles' grants."""
    schema = sql.Identifier(str(conn.execute("SELECT current_schema()").fetchone()[0]))  # type: ignore[index]
    for (name,) in conn.execute(
            """SELECT p.oid::regprocedure::text FROM pg_proc p
               WHERE p.pronamespace = current_schema()::regnamespace
                 AND p.proname LIKE 'bgjobs\\_%%' AND NOT p.proname = ANY(%s)
                 AND NOT EXISTS (SELECT FROM unnest(p.proconfig) c
                                 WHERE c = 'search_path=' || quote_ident(current_schema())
                                           || ', pg_temp')
               ORDER BY 1""", (list(_UNPINNED),)).fetchall():
        conn.execute(sql.SQL("ALTER FUNCTION {} SET search_path = {}, pg_temp").format(
            sql.SQL(name), schema))
    if conn.execute("SELECT to_regclass('bgjobs_runtime_roles')").fetchone() == (None,):
        return
    for (role,) in conn.execute("SELECT role_name FROM bgjobs_runtime_roles ORDER BY 1").fetchall():
        if conn.execute("SELECT to_regrole(quote_ident(%s))", (role,)).fetchone() == (None,):
            log.warning("migrate: runtime role %s no longer exists: not granted", role)
            continue
        conn.execute("SELECT count(*) FROM bgjobs_grant_runtime(%s)", (role,))
        log.info("migrate: granted runtime role %s what the services need", role)


def _apply_baseline(conn: psycopg.Connection, start: Migration, migrations: list[Migration],
                    users_table: str, locks: LockPolicy) -> str:
    """Make the schema at once, recording the migrations it stands for as applied."""
    if conn.execute("SELECT to_regclass('background_jobs')").fetchone() != (None,):
        raise MigrationError(
            "this database already has a background_jobs table that bgjobs did not create "
            "(the seed's hand-made table?): rename or drop it, then run `bgjobs migrate` again "
            "(docs/migrating.md)")

    def run() -> None:
        with conn.transaction():
            _set_lock_timeout(conn, locks, local=True)
            conn.execute("SELECT set_config('bgjobs.users_table', %s, true)", (users_table,))
            conn.execute(start.sql)
            for migration in migrations:
                if migration.version <= start.version:
                    _record(conn, migration)

    try:
        _with_retries(conn, f"baseline/{start.name}", locks, run)
    except MigrationError as exc:
        if isinstance(exc.__cause__, psycopg.errors.LockNotAvailable):
            raise
        raise MigrationError(f"creating the schema ({start.name}) failed: "
                             f"{first_line(exc.__cause__ or exc)}; nothing was changed") from exc
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
