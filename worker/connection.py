"""The supervisor's connections for claims and writes, behind the small part of the pool API
the Store uses.

The supervisor loop is single-threaded, so one connection is all it needs; owning it (instead of
a pool with background threads) keeps reconnects explicit: a broken connection is dropped and
the next store call opens a new one, or raises DatabaseUnavailable. Each connection carries the
worker's id as ``bgjobs.worker_id``, so the database can tell the owner's own writes from
someone else's (see 006_control_channel.sql).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from bgjobs.core.db import connect
from bgjobs.worker.notifications import KEEPALIVES

APPLICATION_NAME = "bgjobs-worker"


class OneConnection:
    def __init__(self, url: str, worker_id: str) -> None:
        self.url = url
        self.options = f"-c bgjobs.worker_id={_option_value(worker_id)}"
        self.conn: psycopg.Connection | None = None

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        if self.conn is None or self.conn.closed or self.conn.broken:
            self.close()
            self.conn = connect(self.url, autocommit=True, application_name=APPLICATION_NAME,
                                options=self.options, **KEEPALIVES)
        conn = self.conn
        try:
            yield conn
        finally:
            if conn.broken:
                self.close()

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def _option_value(value: str) -> str:
    """Escape a value for libpq's ``options`` (backslash-escaped spaces and backslashes)."""
    return value.replace("\\", "\\\\").replace(" ", "\\ ")
