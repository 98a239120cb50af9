"""The one place that reads the environment: every setting bgjobs has, with its default.

Each process reads it once at start (``load()``) and passes the result on; nothing reads
``os.environ`` per request. The README lists every variable.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

import psycopg

from bgjobs.core.errors import ConfigError as ConfigError

LOG_FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_PASSWORD = re.compile(r"(://[^:/@]*:)[^@]*@")
#: The setting that names a session-capable URL (see Config.direct_url); messages name it.
DIRECT_URL_SETTING = "BGJOBS_DIRECT_URL"
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$")


@dataclass(frozen=True)
class Config:
    database_url: str | None = None
    #: A URL to the same database that gives a session of its own (straight to Postgres, or a
    #: pooler in session mode), for every LISTEN and migrate's lock (BGJOBS_DIRECT_URL); None:
    #: DATABASE_URL. Needed when DATABASE_URL is a pooler in transaction mode.
    direct_url: str | None = None
    #: Embedded cluster, development secret key and demo token (BGJOBS_DATA_DIR).
    data_dir: Path = Path(".bgjobs").resolve()
    api_bind: str = "127.0.0.1:8000"
    events_bind: str = "127.0.0.1:8001"
    api_workers: int = 2
    api_threads: int = 4
    events_workers: int = 1
    #: Open streams per events process (BGJOBS_EVENTS_CONNECTIONS).
    events_connections: int = 2000
    pool_max: int = 8
    #: Seconds a request waits for a pooled connection before its 503 (BGJOBS_POOL_TIMEOUT).
    pool_timeout: float = 5.0
    #: How much nicer than their supervisor the worker's job processes run (0-19,
    #: BGJOBS_WORKER_NICE): CPU-bound jobs yield the CPU to the API, the events service and
    #: the supervisor's heartbeats on a shared machine (docs/workers.md).
    worker_nice: int = 10
    cors_origins: tuple[str, ...] = ()
    max_body_bytes: int = 256 * 1024
    #: Mark the session cookie Secure (BGJOBS_COOKIE_SECURE=1) when served over HTTPS.
    cookie_secure: bool = False
    #: Where browsers reach the events service (BGJOBS_EVENTS_URL): a base URL, or "/" for the
    #: API's own origin behind a proxy. None: the page's host on BGJOBS_EVENTS_BIND's port.
    events_url: str | None = None
    log_level: str = "INFO"
    #: Host modules that register job types, imported by every process (BGJOBS_TASK_MODULES).
    task_modules: tuple[str, ...] = ()
    #: Postgres bin/ folder for the embedded cluster (BGJOBS_PG_BIN); None: bgjobs[embedded]'s
    #: wheel, else PATH's pg_ctl (core/embedded.py).
    pg_bin: Path | None = None
    graceful_timeout: int = 10
    access_log: str = "-"
    #: Which service a gunicorn started by `bgjobs api|events` runs (set by the CLI).
    service: str = "api"
    #: BGJOBS_SECRET_KEY; None in development: a key generated once into the data folder.
    secret_key_env: str | None = None
    #: The host app's table of users (BGJOBS_USERS_TABLE): a new background_jobs references
    #: its id when the database has it.
    users_table: str = "users"
    #: BGJOBS_USERS_TABLE is set: `bgjobs migrate` refuses a database without that table.
    users_table_set: bool = False
    #: How long a stream URL made by the Flask extension's stream_url() may open (and reopen)
    #: its stream (BGJOBS_STREAM_TOKEN_SECONDS).
    stream_token_seconds: int = 600
    #: The time zone of cron schedules that name none (BGJOBS_TIMEZONE).
    timezone: str = "UTC"
    #: Days finished jobs are kept, by status (BGJOBS_KEEP_{COMPLETE,ERROR,CANCELLED}_DAYS).
    keep_complete_days: float = 7.0
    keep_error_days: float = 30.0
    keep_cancelled_days: float = 7.0
    #: Seconds between a worker's looks for finished jobs past their age (BGJOBS_PURGE_INTERVAL).
    purge_interval: float = 60.0
    #: Bearer token for /metrics and /events/stats (BGJOBS_METRICS_TOKEN); None: both are off.
    metrics_token: str | None = None
    #: The embedded cluster syncs every commit to disk; BGJOBS_PG_DURABLE=0 starts it without
    #: (faster, for tests: a crash may then lose committed work).
    pg_durable: bool = True
    #: Where nginx in front of both services listens (`bgjobs proxy`, BGJOBS_PROXY_BIND); set,
    #: `bgjobs run` starts it too.
    proxy_bind: str | None = None
    #: Seconds each try of a migration waits for a lock (BGJOBS_MIGRATE_LOCK_TIMEOUT), and how
    #: many tries `bgjobs migrate` makes before giving up (BGJOBS_MIGRATE_LOCK_TRIES).
    migrate_lock_timeout: float = 3.0
    migrate_lock_tries: int = 5

    @property
    def embedded(self) -> bool:
        """True when no DATABASE_URL is set and bgjobs runs its own cluster."""
        return not self.database_url

    def secret_key(self) -> str:
        """BGJOBS_SECRET_KEY, or in development a key generated once and kept in the data folder."""
        if self.secret_key_env:
            return self.secret_key_env
        path = self.data_dir / "secret_key"
        if not path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(secrets.token_urlsafe(48))
            tmp.chmod(0o600)
            os.replace(tmp, path) if not path.exists() else tmp.unlink()
        return path.read_text().strip()


def _text(name: str, default: str) -> str:
    return os.environ.get(name) or default


def _int(name: str, default: int, minimum: int = 0) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def _bounded(name: str, default: int, low: int, high: int) -> int:
    value = _int(name, default, minimum=low)
    if value > high:
        raise ConfigError(f"{name} must be at most {high}, got {value}")
    return value


def _float(name: str, default: float, minimum: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, got {raw!r}") from None
    if not value >= minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {raw}")
    return value


def _flag(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    return raw not in ("0", "false", "no", "off")


def _list(name: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in os.environ.get(name, "").split(",") if part.strip())


def _days(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number of days, got {raw!r}") from None
    if not 0 < value <= 36500:
        raise ConfigError(f"{name} must be above 0 and at most 36500 days, got {raw!r}")
    return value


def _timezone(name: str) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    value = _text(name, "UTC")
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"{name} must be an IANA time zone such as UTC or Europe/Paris, "
                          f"got {value!r}") from None
    return value


def _identifier(name: str, default: str) -> str:
    value = _text(name, default)
    if not _IDENTIFIER.match(value):
        raise ConfigError(f"{name} must be a table name (optionally schema.table), got {value!r}")
    return value


def check_database_url(name: str, value: str) -> str:
    """``value`` if libpq can read it as a connection string; else a ConfigError naming ``name``."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        conninfo_to_dict(value)
    except psycopg.ProgrammingError as exc:
        # libpq quotes the value back: never its password.
        shown = _PASSWORD.sub(r"\1***@", value)
        reason = (str(exc).strip().splitlines() or ["unreadable"])[0].replace(value, shown)
        hint = ("; SQLAlchemy's postgresql+psycopg:// is not accepted, drop the +psycopg"
                if value.startswith(("postgresql+", "postgres+")) else "")
        raise ConfigError(f"{name} is not a Postgres connection URL "
                          f"(postgresql://user@host:port/db): {reason}{hint}") from None
    return value


def load() -> Config:
    """Read the configuration from the environment, with development defaults."""
    cpus = os.cpu_count() or 2
    level = _text("BGJOBS_LOG_LEVEL", "INFO").upper()
    if level not in LOG_LEVELS:
        raise ConfigError(f"BGJOBS_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, got {level!r}")
    pg_bin = os.environ.get("BGJOBS_PG_BIN")
    url = os.environ.get("DATABASE_URL") or None
    direct = os.environ.get(DIRECT_URL_SETTING) or None
    return Config(
        database_url=url and check_database_url("DATABASE_URL", url),
        direct_url=direct and check_database_url(DIRECT_URL_SETTING, direct),
        data_dir=Path(_text("BGJOBS_DATA_DIR", ".bgjobs")).resolve(),
        api_bind=_text("BGJOBS_API_BIND", "127.0.0.1:8000"),
        events_bind=_text("BGJOBS_EVENTS_BIND", "127.0.0.1:8001"),
        api_workers=_int("BGJOBS_API_WORKERS", min(4, max(2, cpus)), minimum=1),
        api_threads=_int("BGJOBS_API_THREADS", 4, minimum=1),
        events_workers=_int("BGJOBS_EVENTS_WORKERS", 1, minimum=1),
        events_connections=_int("BGJOBS_EVENTS_CONNECTIONS", 2000, minimum=1),
        pool_max=_int("BGJOBS_POOL_MAX", 8, minimum=1),
        pool_timeout=_float("BGJOBS_POOL_TIMEOUT", 5.0, minimum=0.1),
        worker_nice=_bounded("BGJOBS_WORKER_NICE", 10, 0, 19),
        cors_origins=_list("BGJOBS_CORS_ORIGINS"),
        max_body_bytes=_int("BGJOBS_MAX_BODY_BYTES", 256 * 1024, minimum=1),
        cookie_secure=_flag("BGJOBS_COOKIE_SECURE"),
        events_url=os.environ.get("BGJOBS_EVENTS_URL") or None,
        log_level=level,
        task_modules=_list("BGJOBS_TASK_MODULES"),
        pg_bin=Path(pg_bin) if pg_bin else None,
        graceful_timeout=_int("BGJOBS_GRACEFUL_TIMEOUT", 10),
        access_log=_text("BGJOBS_ACCESS_LOG", "-"),
        service=_text("BGJOBS_SERVICE", "api"),
        secret_key_env=os.environ.get("BGJOBS_SECRET_KEY") or None,
        users_table=_identifier("BGJOBS_USERS_TABLE", "users"),
        users_table_set=bool(os.environ.get("BGJOBS_USERS_TABLE")),
        stream_token_seconds=_int("BGJOBS_STREAM_TOKEN_SECONDS", 600, minimum=1),
        timezone=_timezone("BGJOBS_TIMEZONE"),
        keep_complete_days=_days("BGJOBS_KEEP_COMPLETE_DAYS", 7.0),
        keep_error_days=_days("BGJOBS_KEEP_ERROR_DAYS", 30.0),
        keep_cancelled_days=_days("BGJOBS_KEEP_CANCELLED_DAYS", 7.0),
        purge_interval=_float("BGJOBS_PURGE_INTERVAL", 60.0, minimum=0.1),
        metrics_token=os.environ.get("BGJOBS_METRICS_TOKEN") or None,
        pg_durable=_flag("BGJOBS_PG_DURABLE", default=True),
        proxy_bind=os.environ.get("BGJOBS_PROXY_BIND") or None,
        migrate_lock_timeout=_float("BGJOBS_MIGRATE_LOCK_TIMEOUT", 3.0, minimum=0.1),
        migrate_lock_tries=_int("BGJOBS_MIGRATE_LOCK_TRIES", 5, minimum=1),
    )


def setup_logging(level: str, *, force: bool = False) -> None:
    """One log format for every bgjobs process (the pid tells processes apart)."""
    logging.basicConfig(level=level, format=LOG_FORMAT, force=force)
