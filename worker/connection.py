"""The supervisor's connections for claims and writes, each a ConnectionSource
(core/connections.py) for a Store.

The supervisor loop is single-threaded, so one connection is all it needs; owning it (instead of
a pool with background threads) keeps reconnects explicit: a broken connection is dropped and
the next store call opens a new one, or raises DatabaseUnavailable. It carries no session
state (the worker's own writes say whose they are per statement, see complete_jobs in
sql/queries.sql), so it may go through a pooler in transaction mode; it keeps prepared
statements only when it reaches Postgres directly.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from bgjobs.core.channels import KEEPALIVES, WORKER
from bgjobs.core.db import connect, prepare_if_direct


class OneConnection:
    """One connection, opened on first use and again after it broke."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.conn: psycopg.Connection | None = None

    @contextmanager
    def lend(self) -> Iterator[psycopg.Connection]:
        if self.conn is None or self.conn.closed or self.conn.broken:
            self.close()
            self.conn = connect(self.url, autocommit=True, application_name=WORKER, **KEEPALIVES)
            try:
                prepare_if_direct(self.conn)
            except psycopg.OperationalError:
                self.close()
                raise
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
