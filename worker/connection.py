"""The supervisor's connections for claims and writes, each a ConnectionSource
(core/connections.py) for a Store.

The supervisor loop is single-threaded, so one connection is all it needs; owning it (instead of
a pool with background threads) keeps reconnects explicit: a broken connection is dropped and
the next store call opens a new one, or raises DatabaseUnavailable. It carries no session
state (the worker's own writes say whose they are per statement, see complete_jobs in
sql/queries.sql), so it may go through a pooler in transaction mode; it keeps prepared
statements, and a limit on idle transactions, only when it reaches Postgres directly.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from bgjobs.core.channels import KEEPALIVES, WORKER
from bgjobs.core.db import connect, prepare_if_direct

#: Seconds Postgres lets one of the supervisor's transactions sit idle before it ends the
#: session. They take milliseconds (the reaper's, schedules, the registry sync), but a
#: supervisor frozen inside one (a paused VM, SIGSTOP, a machine gone without a reset) would
#: keep its locks, the reaper's turn among them: no other supervisor could take back any job.
#: Longer than any of them takes, shorter than a lease (30 s by default). Set on a direct
#: connection only: through a pooler in transaction mode a session setting would reach other
#: clients, and the pooler's own idle_transaction_timeout does it (docs/operations.md).
IDLE_IN_TRANSACTION_SECONDS = 10.0


class OneConnection:
    """One connection, opened on first use and again after it broke."""

    def __init__(self, url: str,
                 idle_in_transaction: float = IDLE_IN_TRANSACTION_SECONDS) -> None:
        self.url = url
        self.idle_in_transaction = idle_in_transaction
        self.conn: psycopg.Connection | None = None
        #: lends that ended without an error: Postgres answered (the supervisor's backoff)
        self.answered = 0

    @contextmanager
    def lend(self) -> Iterator[psycopg.Connection]:
        if self.conn is None or self.conn.closed or self.conn.broken:
            self.close()
            self.conn = connect(self.url, autocommit=True, application_name=WORKER, **KEEPALIVES)
            try:
                if prepare_if_direct(self.conn) and self.idle_in_transaction:
                    self.conn.execute(
                        "SELECT set_config('idle_in_transaction_session_timeout', %s, false)",
                        (f"{round(self.idle_in_transaction * 1000)}ms",), prepare=False)
            except psycopg.OperationalError:
                self.close()
                raise
        conn = self.conn
        try:
            yield conn
        finally:
            if conn.broken:
                self.close()
        self.answered += 1

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
