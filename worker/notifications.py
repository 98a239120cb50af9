"""The supervisor's one LISTEN connection: autocommit, outside any pool, read without blocking.

It listens on ``background_jobs_new`` (a job became claimable: the payload is its type) and
``background_jobs_control`` (a running job was taken from its worker); names, payloads and the
connection itself come from bgjobs.core.channels. Its socket goes into the supervisor's
selector; when it is readable, ``drain`` returns the notifications that arrived. A failure
raises DatabaseUnavailable and the supervisor reconnects with backoff (and re-reads the table,
since notifications sent meanwhile are lost).
"""

from __future__ import annotations

from typing import NamedTuple

import psycopg

from bgjobs.core import channels
from bgjobs.core.errors import DatabaseUnavailable


class Note(NamedTuple):
    channel: str
    payload: str
    #: the backend that sent it (the enqueuer's connection, for a new job)
    sender: int = 0


class NotificationListener:
    def __init__(self, url: str, application_name: str = channels.WORKER_LISTEN) -> None:
        self.url = url
        self.application_name = application_name
        self.conn: psycopg.Connection | None = None
        self.pid = 0

    def connect(self) -> None:
        """LISTEN anew; NoSession if the URL is a pooler in transaction mode."""
        self.close()
        self.conn, self.pid = channels.listen(self.url, (channels.NEW, channels.CONTROL),
                                              self.application_name)

    def fileno(self) -> int:
        assert self.conn is not None
        return self.conn.fileno()

    def backend_pid(self) -> int:
        """The pid of this connection's backend (how peers see this supervisor)."""
        return self.pid if self.conn is not None else 0

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
