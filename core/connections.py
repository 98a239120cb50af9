"""The one narrow interface the store takes its connections through.

A ``ConnectionSource`` lends a connection for the length of a block: core/db.py's Pool (the
API, the CLI, host code) and worker/connection.py's OneConnection (a supervisor's claims and
writes) both are one, and so may a test's double be.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Protocol

import psycopg


class ConnectionSource(Protocol):
    """Where the store's connections come from: a Pool, or a worker's one connection
    (worker/connection.py). The store needs nothing else of it."""

    @property
    def url(self) -> str:
        """Where its connections go (a LISTEN of one's own needs a session there, unless
        BGJOBS_DIRECT_URL says where else)."""
        ...

    def lend(self) -> AbstractContextManager[psycopg.Connection]:
        """An autocommit connection for the length of the block; DatabaseUnavailable (or a
        driver error the store translates) when there is none."""
        ...
