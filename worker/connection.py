"""The supervisor's write connection, behind the small part of the pool API the Store uses.

The supervisor loop is single-threaded, so one connection is all it needs; owning it (instead of
a pool with background threads) keeps reconnects explicit: a broken connection is dropped and
the next store call opens a new one, or raises DatabaseUnavailable.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from server.db import connect
from worker.listener import KEEPALIVES

APPLICATION_NAME = "bgjobs-worker"


class OneConnection:
    def __init__(self, url: str) -> None:
        self.url = url
        self.conn: psycopg.Connection | None = None

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        if self.conn is None or self.conn.closed or self.conn.broken:
            self.close()
            self.conn = connect(self.url, autocommit=True, application_name=APPLICATION_NAME,
                                **KEEPALIVES)
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
