"""The supervisor's one LISTEN connection: autocommit, outside any pool, read without blocking.

Its socket goes into the supervisor's selector; when it is readable, ``drain`` returns the
notifications that arrived. A failure raises DatabaseUnavailable and the supervisor reconnects
with backoff (and re-reads the table, since notifications sent meanwhile are lost).
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from server.db import DatabaseUnavailable, connect

NEW = "background_jobs_new"
PROGRESS = "background_jobs_progress"
APPLICATION_NAME = "bgjobs-worker-listen"
#: Notice a silently dead peer (no RST, e.g. a network partition) within about a minute.
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10,
              "keepalives_count": 3}


class Listener:
    def __init__(self, url: str) -> None:
        self.url = url
        self.conn: psycopg.Connection | None = None

    def connect(self) -> None:
        self.close()
        conn = connect(self.url, autocommit=True, application_name=APPLICATION_NAME,
                       **KEEPALIVES)
        try:
            for channel in (NEW, PROGRESS):
                conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        except psycopg.OperationalError as exc:
            conn.close()
            raise DatabaseUnavailable(f"LISTEN failed: {exc}") from exc
        self.conn = conn

    def fileno(self) -> int:
        assert self.conn is not None
        return self.conn.fileno()

    def drain(self) -> list[tuple[str, str]]:
        """The (channel, payload) pairs that arrived; call when the socket is readable."""
        assert self.conn is not None
        pgconn = self.conn.pgconn
        try:
            pgconn.consume_input()
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailable(f"the LISTEN connection broke: {exc}") from exc
        out = []
        while (n := pgconn.notifies()) is not None:
            out.append((n.relname.decode(), n.extra.decode()))
        return out

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
