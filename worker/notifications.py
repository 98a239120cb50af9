"""The supervisor's one LISTEN connection: autocommit, outside any pool, read without blocking.

It listens on ``background_jobs_new`` (a job became claimable: the payload is its type) and
``background_jobs_control`` (a running job was taken from its worker). Its socket goes into the
supervisor's selector; when it is readable, ``drain`` returns the notifications that arrived. A
failure raises DatabaseUnavailable and the supervisor reconnects with backoff (and re-reads the
table, since notifications sent meanwhile are lost).
"""

from __future__ import annotations

import json
import logging
from typing import NamedTuple, TypedDict
from uuid import UUID

import psycopg
from psycopg import sql

from bgjobs.core.db import connect
from bgjobs.core.errors import DatabaseUnavailable

log = logging.getLogger(__name__)

NEW = "background_jobs_new"
CONTROL = "background_jobs_control"
APPLICATION_NAME = "bgjobs-worker-listen"
#: A supervisor limited to some types (--types) is never chosen to claim for the others.
TYPED_APPLICATION_NAME = "bgjobs-worker-listen-typed"
#: A background_jobs_new payload with this prefix asks every idle worker of the type to claim.
EVERYONE = "*"
#: Notice a silently dead peer (no RST, e.g. a network partition) within about a minute.
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10,
              "keepalives_count": 3}


class Note(NamedTuple):
    channel: str
    payload: str
    #: the backend that sent it (the enqueuer's connection, for a new job)
    sender: int = 0


class NotificationListener:
    def __init__(self, url: str, application_name: str = APPLICATION_NAME) -> None:
        self.url = url
        self.application_name = application_name
        self.conn: psycopg.Connection | None = None

    def connect(self) -> None:
        self.close()
        conn = connect(self.url, autocommit=True, application_name=self.application_name,
                       **KEEPALIVES)
        try:
            for channel in (NEW, CONTROL):
                conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        except psycopg.OperationalError as exc:
            conn.close()
            raise DatabaseUnavailable(f"LISTEN failed: {exc}") from exc
        self.conn = conn

    def fileno(self) -> int:
        assert self.conn is not None
        return self.conn.fileno()

    def backend_pid(self) -> int:
        """The pid of this connection's backend (how peers see this supervisor)."""
        return self.conn.info.backend_pid if self.conn is not None else 0

    def drain(self) -> list[Note]:
        """The notifications that arrived; call when the socket is readable."""
        assert self.conn is not None
        pgconn = self.conn.pgconn
        try:
            pgconn.consume_input()
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailable(f"the LISTEN connection broke: {exc}") from exc
        out = []
        while (n := pgconn.notifies()) is not None:
            out.append(Note(n.relname.decode(), n.extra.decode(), n.be_pid))
        return out

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class TakenBack(TypedDict):
    """A ``background_jobs_control`` payload: this attempt of the job is no longer its worker's."""

    id: str
    attempt: int


def parse_taken_back(payload: str) -> TakenBack | None:
    """The payload as a TakenBack, or None (logged) if it is not one."""
    try:
        data = json.loads(payload)
        job_id, attempt = str(UUID(data["id"])), data["attempt"]
    except (ValueError, TypeError, KeyError):
        job_id, attempt = "", None
    if type(attempt) is not int:
        log.warning("dropped an unreadable %s payload: %.200s", CONTROL, payload)
        return None
    return TakenBack(id=job_id, attempt=attempt)
