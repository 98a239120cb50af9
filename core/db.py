"""Where the database is, and connections to it."""

from __future__ import annotations

import logging
import time
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from bgjobs.core import embedded
from bgjobs.core.config import Config
from bgjobs.core.errors import DatabaseUnavailable, first_line

log = logging.getLogger(__name__)

#: A pooled connection idle longer than this is checked (one round trip) before it is lent:
#: after a Postgres restart it would fail the request. One used a moment ago (see
#: ``mark_used``) is lent as is.
IDLE_CHECK_SECONDS = 2.0
CONNECT_TIMEOUT = 5


def database_url(config: Config, start: bool = False) -> str:
    """DATABASE_URL, or the embedded cluster's URL (started first when ``start``)."""
    if config.database_url:
        return config.database_url
    cluster = embedded.Cluster(config.data_dir, config.pg_bin)
    if start:
        cluster.ensure_running()
    elif not cluster.is_running():
        raise DatabaseUnavailable(
            f"the embedded Postgres in {config.data_dir} is not running and DATABASE_URL is "
            "unset: start it with `bgjobs db start` (or `make run`), or set DATABASE_URL"
        )
    return cluster.url()


def connect(url: str, **kwargs) -> psycopg.Connection:
    """One connection, with driver errors on connect turned into DatabaseUnavailable."""
    try:
        return psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT, **kwargs)
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"cannot connect to Postgres: {first_line(exc)}") from exc


def make_pool(url: str, *, min_size: int = 1, max_size: int = 8, name: str = "bgjobs",
              open_wait: bool = False, timeout: float = 5.0,
              **connect_kwargs: Any) -> ConnectionPool:
    """An autocommit pool that opens lazily and survives Postgres restarts.

    Lending a connection costs no round trip unless it sat idle (see IDLE_CHECK_SECONDS).
    ``connect_kwargs`` go to every ``psycopg.connect``.
    """
    pool = ConnectionPool(
        url,
        min_size=min_size,
        max_size=max_size,
        name=name,
        open=False,
        timeout=timeout,
        # Give up a failed reconnection quickly: the next request that needs a connection
        # starts a new attempt, and requests meanwhile get a 503 instead of piling up.
        reconnect_timeout=0,
        configure=mark_used,
        check=_check_if_idle,
        kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT,
                "application_name": name, **connect_kwargs},
    )
    pool.open(wait=open_wait)
    return pool


def mark_used(conn: psycopg.Connection) -> None:
    """Note that ``conn`` just talked to Postgres (so lending it again needs no check)."""
    # Not the pool's `reset` hook: with one, every return goes through a worker thread.
    conn._bgjobs_idle_since = time.monotonic()  # type: ignore[attr-defined]


def _check_if_idle(conn: psycopg.Connection) -> None:
    idle_since = getattr(conn, "_bgjobs_idle_since", 0.0)
    if time.monotonic() - idle_since > IDLE_CHECK_SECONDS:
        ConnectionPool.check_connection(conn)
