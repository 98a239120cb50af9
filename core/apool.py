"""The async connection pool, with the Breaker of bgjobs.core.db: used by the events service and
by ``bgjobs.aio`` (host code on an event loop)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from bgjobs.core import channels, replan
from bgjobs.core.db import (
    CONNECT_TIMEOUT,
    IDLE_CHECK_SECONDS,
    Breaker,
    aprepare_if_direct,
    waits,
)


class AsyncPool(AsyncConnectionPool):
    """The async pool with a Breaker (bgjobs.core.db): known outages are answered at once."""

    def __init__(self, url: str, *args: Any, breaker: Breaker, **kwargs: Any) -> None:
        self.url, self.breaker = url, breaker
        super().__init__(url, *args, **kwargs)

    @asynccontextmanager
    async def lend(self) -> AsyncIterator[psycopg.AsyncConnection]:
        """Like ``connection()``, but DatabaseUnavailable at once while Postgres is down."""
        for wait in waits(self.timeout, self.breaker):
            with suppress(PoolTimeout):
                conn = await self.getconn(timeout=wait)
                break
        else:
            raise PoolTimeout(f"no connection after {self.timeout:.1f}s")
        try:
            async with conn:
                yield conn
        finally:
            await self.putconn(conn)


def make_pool(url: str, max_size: int, timeout: float = 5.0, *,
              name: str = channels.EVENTS) -> AsyncPool:
    """A lazily opened pool that outlives Postgres restarts (connections are checked);
    ``name`` is its connections' application_name (the events service's by default)."""
    breaker = Breaker(url, name, autocommit=True, application_name=name)

    async def configure(conn: psycopg.AsyncConnection) -> None:
        try:
            await aprepare_if_direct(conn)  # the pool may sit behind a pooler in transaction mode
        except BaseException:
            # Cancelled here (the loop's end), the pool forgets the connection without closing
            # it: it would stay open until the process exits.
            await conn.close()
            raise
        breaker.succeeded()
        await _mark_used(conn)

    return AsyncPool(
        url,
        breaker=breaker,
        min_size=1,
        max_size=max_size,
        name=name,
        open=False,
        timeout=timeout,
        reconnect_timeout=0,  # give up a failed reconnection and open the breaker
        reconnect_failed=lambda _pool: breaker.failed("cannot connect to Postgres"),
        configure=configure,
        # Check only a connection that sat idle (after a Postgres restart it would fail the
        # read): checking every one cost each row read a second round trip, and on a loop busy
        # sending to a thousand streams every round trip waits for a whole round of sends.
        check=_check_if_idle,
        kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT,
                "application_name": name, "cursor_factory": replan.AsyncCursor,
                "prepare_threshold": None},
    )


async def _mark_used(conn: psycopg.AsyncConnection) -> None:
    conn._bgjobs_idle_since = time.monotonic()  # type: ignore[attr-defined]


async def _check_if_idle(conn: psycopg.AsyncConnection) -> None:
    if time.monotonic() - getattr(conn, "_bgjobs_idle_since", 0.0) > IDLE_CHECK_SECONDS:
        await AsyncConnectionPool.check_connection(conn)
    await _mark_used(conn)
