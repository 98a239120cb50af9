"""The Postgres channels: their names, their payloads, and the connections that LISTEN.

The triggers in sql/ NOTIFY; the workers (worker/notifications.py), the events service
(server/broadcast.py) and ``bgjobs.wait`` (tasks/wait.py) LISTEN. This module is their one
vocabulary: each channel's name and typed payload (parsed here; what does not parse is dropped
with a log line, never raised), the keepalives and ``application_name`` of every connection,
and the check a LISTEN connection makes as it starts. Through a pooler in transaction mode a
LISTEN is never heard (the listening client holds no server connection between statements),
so instead of a process that silently never wakes, that check says so in one line naming
BGJOBS_DIRECT_URL.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple, NotRequired, TypedDict
from uuid import UUID

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from bgjobs.core.config import DIRECT_URL_SETTING
from bgjobs.core.db import CONNECT_TIMEOUT, connect
from bgjobs.core.errors import DatabaseUnavailable, NoSession, first_line
from bgjobs.core.jobs import Status

log = logging.getLogger(__name__)

#: A job became claimable (insert, retry, requeue); the payload is its type, or EVERYONE + type
#: to ask every idle worker of that type to claim.
NEW = "background_jobs_new"
#: A job's status, progress or result changed: a ProgressPayload or an InsertedPayload.
PROGRESS = "background_jobs_progress"
#: A running attempt was taken from its worker by someone else: a TakenBack.
CONTROL = "background_jobs_control"
#: A token was revoked or a session ended: an AuthPayload.
AUTH = "bgjobs_auth"
EVERYONE = "*"


def application_name(process: str, *, listen: bool = False, detail: str = "") -> str:
    """``bgjobs-<process>[-listen][-<detail>]``: how pg_stat_activity names every connection
    bgjobs opens (the workers find each other's LISTEN connections by it)."""
    return "-".join(p for p in ("bgjobs", process, "listen" if listen else "", detail) if p)


API = application_name("api")
FLASK = application_name("flask")
ENQUEUE = application_name("enqueue")
#: bgjobs.aio's pools (host code on an event loop)
AIO = application_name("aio")
WORKER = application_name("worker")
WORKER_LISTEN = application_name("worker", listen=True)
#: A supervisor limited to some types (--types) is never chosen to claim for the others.
WORKER_LISTEN_TYPED = application_name("worker", listen=True, detail="typed")
EVENTS = application_name("events")
EVENTS_LISTEN = application_name("events", listen=True)
WAIT = application_name("wait")
#: The second connection of a LISTEN check (check_hears), which sends the test NOTIFY.
CHECK = application_name("check")

#: Every long-lived connection notices a silently dead peer (no RST: a partition, a failover
#: that moved an address) within about 25 s.
KEEPALIVES: dict[str, Any] = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
                              "keepalives_count": 3}
#: How long a LISTEN connection behind a pooler waits for its own test notification.
HEAR_TIMEOUT = 2.0
_STATUSES = frozenset(s.value for s in Status)


# Payloads ---------------------------------------------------------------------------------


class ProgressPayload(TypedDict):
    """A ``background_jobs_progress`` payload; all but ``id`` are absent when it was too big."""

    id: UUID
    user_id: NotRequired[int | None]
    job_type: NotRequired[str]
    status: NotRequired[str]
    version: NotRequired[int]
    progress: NotRequired[dict[str, Any] | None]


class InsertedPayload(TypedDict):
    """Up to 100 jobs of one user that one statement inserted or changed the status of
    (010_cheaper_notify.sql): read their rows."""

    ids: list[UUID]
    user_id: int | None


class TakenBack(TypedDict):
    """A ``background_jobs_control`` payload: this attempt of the job is no longer its worker's."""

    id: str
    attempt: int


class AuthPayload(TypedDict):
    """A ``bgjobs_auth`` payload: a credential of this user ended."""

    user_id: int


def encode(payload: Mapping[str, Any]) -> str:
    """A payload as the triggers write it: compact JSON, UUIDs as text."""
    return json.dumps(payload, separators=(",", ":"), default=str)


def parse_progress(raw: str) -> ProgressPayload | InsertedPayload | None:
    """A ``background_jobs_progress`` payload, or None if it is neither shape."""
    try:
        data = json.loads(raw)
        if "ids" in data:
            user_id = data.get("user_id")
            if not (user_id is None or type(user_id) is int):
                return None
            return InsertedPayload(ids=[UUID(i) for i in data["ids"]], user_id=user_id)
        job_id = UUID(data["id"])
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
        return None
    if len(data) == 1:
        return ProgressPayload(id=job_id)
    user_id, status, version = data.get("user_id"), data.get("status"), data.get("version")
    progress = data.get("progress")
    if (not (user_id is None or type(user_id) is int) or status not in _STATUSES
            or type(version) is not int or not (progress is None or isinstance(progress, dict))):
        return None
    return ProgressPayload(id=job_id, user_id=user_id, status=status, version=version,
                           progress=progress, job_type=str(data.get("job_type", "")))


def parse_taken_back(raw: str) -> TakenBack | None:
    """A ``background_jobs_control`` payload, or None (logged) if it is not one."""
    try:
        data = json.loads(raw)
        job_id, attempt = str(UUID(data["id"])), data["attempt"]
    except (ValueError, TypeError, KeyError, RecursionError):
        job_id, attempt = "", None
    if type(attempt) is not int:
        log.warning("dropped an unreadable %s payload: %.200s", CONTROL, raw)
        return None
    return TakenBack(id=job_id, attempt=attempt)


def parse_auth(raw: str) -> AuthPayload | None:
    """A ``bgjobs_auth`` payload, or None if it is not one."""
    try:
        user_id = json.loads(raw)["user_id"]
    except (ValueError, TypeError, KeyError, RecursionError):
        return None
    return AuthPayload(user_id=user_id) if type(user_id) is int else None


# LISTEN connections -----------------------------------------------------------------------

_heard: set[str] = set()  # URLs through a pooler whose LISTEN was heard, in this process
_heard_lock = threading.Lock()


def listen_sql(channel: str) -> sql.Composed:
    return sql.SQL("LISTEN {}").format(sql.Identifier(channel))


class Listening(NamedTuple):
    conn: psycopg.Connection
    #: its backend's pid as pg_stat_activity shows it (behind a pooler in session mode, not
    #: conn.info.backend_pid, which is the pooler's own number)
    pid: int


def listen(url: str, channels: Iterable[str], name: str) -> Listening:
    """An autocommit connection LISTENing on ``channels``, outside any pool (LISTEN is the
    last statement it runs, as pg_stat_activity shows).

    DatabaseUnavailable if Postgres cannot be reached; NoSession if ``url`` leads to a pooler
    in transaction mode, where nothing would ever be heard.
    """
    conn = connect(url, autocommit=True, application_name=name, **KEEPALIVES)
    try:
        pid = check_hears(conn, url, "LISTEN")
        for channel in channels:
            conn.execute(listen_sql(channel))
    except psycopg.OperationalError as exc:
        conn.close()
        raise DatabaseUnavailable(f"LISTEN failed: {first_line(exc)}") from exc
    except BaseException:
        conn.close()
        raise
    return Listening(conn, pid)


def check_hears(conn: psycopg.Connection, url: str, what: str) -> int:
    """Raise NoSession unless ``conn`` holds a session of its own (it hears a NOTIFY); returns
    its backend's pid.

    Straight to Postgres it does (one round trip to tell). Behind a pooler, it LISTENs on a
    channel of its own, a second connection NOTIFYs it, and it waits HEAR_TIMEOUT: in session
    mode that arrives at once, in transaction mode never.
    """
    row = conn.execute("SELECT pg_backend_pid()", prepare=False).fetchone()
    pid = row[0] if row else 0
    if url in _heard or pid == conn.info.backend_pid:
        return pid
    channel = f"bgjobs_hear_{secrets.token_hex(8)}"
    conn.execute(listen_sql(channel))
    with connect(url, autocommit=True, application_name=CHECK) as other:
        other.execute("SELECT pg_notify(%s, '')", (channel,))
    heard = any(n.channel == channel for n in conn.notifies(timeout=HEAR_TIMEOUT, stop_after=1))
    conn.execute(sql.SQL("UNLISTEN {}").format(sql.Identifier(channel)))
    if not heard:
        raise NoSession(no_session(url, what))
    with _heard_lock:
        _heard.add(url)
    return pid


async def alisten(url: str, channels: Iterable[str], name: str) -> psycopg.AsyncConnection:
    """``listen`` for the event loop (the events service); driver errors are raised as they are."""
    conn = await psycopg.AsyncConnection.connect(
        url, autocommit=True, application_name=name, connect_timeout=CONNECT_TIMEOUT,
        prepare_threshold=None, **KEEPALIVES)
    try:
        await _acheck_hears(conn, url)
        for channel in channels:
            await conn.execute(listen_sql(channel))
    except BaseException:
        await conn.close()
        raise
    return conn


async def _acheck_hears(conn: psycopg.AsyncConnection, url: str) -> None:
    """``check_hears`` on an async connection."""
    cur = await conn.execute("SELECT pg_backend_pid()", prepare=False)
    row = await cur.fetchone()
    if url in _heard or (row is not None and row[0] == conn.info.backend_pid):
        return
    channel = f"bgjobs_hear_{secrets.token_hex(8)}"
    await conn.execute(listen_sql(channel))
    async with await psycopg.AsyncConnection.connect(
            url, autocommit=True, application_name=CHECK, connect_timeout=CONNECT_TIMEOUT,
            prepare_threshold=None) as other:
        await other.execute("SELECT pg_notify(%s, '')", (channel,))
    heard = False
    async for note in conn.notifies(timeout=HEAR_TIMEOUT, stop_after=1):
        heard = note.channel == channel
    await conn.execute(sql.SQL("UNLISTEN {}").format(sql.Identifier(channel)))
    if not heard:
        raise NoSession(no_session(url, "LISTEN"))
    with _heard_lock:
        _heard.add(url)


def require_session(url: str, what: str) -> None:
    """NoSession unless ``url`` gives a session of its own (``what`` needs one)."""
    with connect(url, autocommit=True, application_name=CHECK) as conn:
        try:
            check_hears(conn, url, what)
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailable(f"cannot check the session: {first_line(exc)}") from exc


def no_session(url: str, what: str) -> str:
    """The one line that says ``url`` is a pooler in transaction mode and what to set."""
    try:
        parts = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        parts = {}
    where = (f"{parts.get('host') or 'localhost'}:{parts.get('port') or 5432}/"
             f"{parts.get('dbname') or ''}")
    return (f"{what} needs a session of its own, and {where} gives none (a NOTIFY to it was "
            f"never heard: a pooler in transaction mode?); set {DIRECT_URL_SETTING} to a URL "
            "straight to Postgres or to a pooler in session mode (docs/operations.md)")
