"""Where the database is, and connections to it."""

from __future__ import annotations

import logging

import psycopg
from psycopg_pool import ConnectionPool

from server import embedded
from server.config import Config

log = logging.getLogger(__name__)


class DatabaseUnavailable(RuntimeError):
    """Postgres cannot be reached (down, refused, restarting, pool exhausted)."""


def database_url(config: Config, start: bool = False) -> str:
    """DATABASE_URL, or the embedded cluster's URL (started first when ``start``)."""
    if config.database_url:
        return config.database_url
    cluster = embedded.Cluster(config.data_dir)
    if start:
        cluster.ensure_running()
    elif not cluster.is_running():
        raise DatabaseUnavailable(
            "the embedded Postgres is not running and DATABASE_URL is unset: start it with "
            "`bgjobs db start` (or `make run`), or set DATABASE_URL"
        )
    return cluster.url()


def connect(url: str, **kwargs) -> psycopg.Connection:
    """One connection, with driver errors on connect turned into DatabaseUnavailable."""
    try:
        return psycopg.connect(url, connect_timeout=5, **kwargs)
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"cannot connect to Postgres: {_first_line(exc)}") from exc


def make_pool(url: str, *, min_size: int = 1, max_size: int = 8, name: str = "bgjobs",
              open_wait: bool = False, check: bool = True) -> ConnectionPool:
    """A pool that opens lazily and survives Postgres restarts.

    ``check`` tests each connection as it is lent (one round trip) so a request after a
    restart does not fail on a dead connection; hot loops that handle errors turn it off.
    """
    pool = ConnectionPool(
        url,
        min_size=min_size,
        max_size=max_size,
        name=name,
        open=False,
        timeout=5,
        # Give up a failed reconnection quickly: the next request that needs a connection
        # starts a new attempt, and requests meanwhile get a 503 instead of piling up.
        reconnect_timeout=0,
        check=ConnectionPool.check_connection if check else None,
        kwargs={"autocommit": True, "connect_timeout": 5},
    )
    pool.open(wait=open_wait)
    return pool


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
