"""Where the database is, and connections to it."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from types import TracebackType
from typing import Any, Literal

import psycopg
from psycopg.rows import tuple_row
from psycopg_pool import ConnectionPool, PoolTimeout

from bgjobs.core import embedded, replan
from bgjobs.core.config import Config
from bgjobs.core.errors import DatabaseUnavailable, first_line

log = logging.getLogger(__name__)

#: A pooled connection idle longer than this is checked (one round trip) before it is lent:
#: after a Postgres restart it would fail the request. One used a moment ago (see
#: ``mark_used``) is lent as is.
IDLE_CHECK_SECONDS = 2.0
CONNECT_TIMEOUT = 5
#: While Postgres is known to be down, how often a background probe tries to connect.
PROBE_INTERVAL = 0.5
#: A request waiting for a pooled connection looks at the breaker this often.
LEND_SLICE = 0.2


#: psycopg's default: a statement run this many times on a connection is prepared server-side.
PREPARE_THRESHOLD = 5
#: SQLSTATEs that mean the database (or the way to it) is gone, not that it refused a statement:
#: connection exceptions but 08P01 (a protocol violation, which Postgres also sends to a client
#: that binds a prepared statement of another session through a pooler), a shutdown, a server
#: that is starting or full.
_OUTAGE_STATES = frozenset({"57P01", "57P02", "57P03", "53300"})
#: What PgBouncer answers, as a plain ERROR 08P01, when it has no server to run a query on
#: (Postgres restarting or gone): the session works again once Postgres is back. "invalid
#: server parameter": the server connection died while PgBouncer set the client's parameters
#: on it (seen when Postgres shut down under a pool: "varcache_apply failed: FATAL:
#: terminating connection due to administrator command").
_POOLER_NO_SERVER = ("server login has been failing", "query_wait_timeout",
                     "server conn crashed", "cannot connect to server",
                     "invalid server parameter")


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` says Postgres cannot be reached (503), rather than that it answered no.

    An error with no SQLSTATE is the client's own (the socket broke); FATAL and PANIC end the
    session, from Postgres or from a pooler (PgBouncer sends 08P01 FATAL when it cannot reach
    the server), while the same 08P01 as an ERROR leaves a working session behind: an outage
    only when PgBouncer says it has no server (a Postgres restarting behind it).
    """
    if isinstance(exc, PoolTimeout):
        return True
    if not isinstance(exc, psycopg.Error):
        return False
    state = exc.sqlstate
    if state is None:
        return isinstance(exc, psycopg.OperationalError)
    if exc.diag.severity_nonlocalized in ("FATAL", "PANIC"):
        return True
    if state == "08P01":
        message = exc.diag.message_primary or str(exc)
        return any(words in message for words in _POOLER_NO_SERVER)
    return state.startswith("08") or state in _OUTAGE_STATES


def is_direct(conn: psycopg.Connection) -> bool:
    """Whether ``conn`` talks to Postgres itself, with no pooler between (one round trip).

    A pooler hands its clients a backend key of its own making, so the pid the connection was
    given at start is not the pid of the backend that answers.
    """
    # Its own cursor: a caller's connection may read dicts, or bind on the client.
    row = psycopg.Cursor(conn, row_factory=tuple_row).execute("SELECT pg_backend_pid()",
                                                              prepare=False).fetchone()
    return row is not None and row[0] == conn.info.backend_pid


def prepare_if_direct(conn: psycopg.Connection) -> bool:
    """Prepared statements on ``conn`` only if it reaches Postgres directly (returned).

    A pooler in transaction mode runs each transaction on whichever server connection is free,
    where a statement prepared on another does not exist, or is another statement of the same
    name. Connections are made with prepare_threshold=None; this turns it back on when safe.
    """
    direct = is_direct(conn)
    conn.prepare_threshold = PREPARE_THRESHOLD if direct else None
    return direct


async def aprepare_if_direct(conn: psycopg.AsyncConnection) -> None:
    """``prepare_if_direct`` for an async connection (the events service's pool)."""
    cur = await conn.execute("SELECT pg_backend_pid()", prepare=False)
    row = await cur.fetchone()
    direct = row is not None and row[0] == conn.info.backend_pid
    conn.prepare_threshold = PREPARE_THRESHOLD if direct else None


def direct_url(config: Config, start: bool = False) -> str:
    """Where bgjobs takes a session of its own (every LISTEN, migrate's lock):
    BGJOBS_DIRECT_URL, else the database URL (see docs/operations.md, connection poolers)."""
    return config.direct_url or database_url(config, start)


def database_url(config: Config, start: bool = False) -> str:
    """DATABASE_URL, or the embedded cluster's URL (started first when ``start``)."""
    if config.database_url:
        return config.database_url
    cluster = embedded.Cluster(config.data_dir, config.pg_bin, config.pg_durable)
    if start:
        cluster.ensure_running()
    elif not cluster.is_running():
        raise DatabaseUnavailable(
            f"the embedded Postgres in {config.data_dir} is not running and DATABASE_URL is "
            "unset: start it with `bgjobs db start` (or `make run`), or set DATABASE_URL"
        )
    return cluster.url()


def connect(url: str, **kwargs) -> psycopg.Connection:
    """One connection, with driver errors on connect turned into DatabaseUnavailable.

    Without prepared statements unless asked (``prepare_if_direct``): it may go through a
    pooler.
    """
    try:
        return psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT,
                               **{"cursor_factory": replan.Cursor, "prepare_threshold": None,
                                  **kwargs})
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"cannot connect to Postgres: {first_line(exc)}") from exc


class Breaker:
    """Whether Postgres is known to be down, so that callers fail at once instead of waiting.

    A failed connection attempt opens it (the pool giving up a reconnection, a probe); any
    successful one closes it. While it is open, every ``check`` raises DatabaseUnavailable at
    once, and one background thread tries to connect every PROBE_INTERVAL: recovery needs no
    request and no restart. A query failing on a live connection (a terminated backend) does
    not open it, but starts a probe (``suspect``) that opens it if Postgres is really gone.
    """

    def __init__(self, url: str, name: str, *, probe: Callable[[], None] | None = None,
                 **connect_kwargs: Any) -> None:
        self.url, self.name = url, name
        self.connect_kwargs = connect_kwargs
        #: One connection attempt (raises psycopg.Error on failure).
        self.probe = probe or self._connect
        self.down_since: float | None = None
        self.reason = ""
        self._lock = threading.Lock()
        self._probing = False

    @property
    def is_open(self) -> bool:
        return self.down_since is not None

    def check(self) -> None:
        """Raise DatabaseUnavailable while Postgres is known to be down."""
        down_since = self.down_since
        if down_since is not None:
            raise DatabaseUnavailable(
                f"the database has been unreachable for {time.monotonic() - down_since:.0f}s "
                f"({self.reason})")

    def failed(self, reason: str) -> None:
        """A connection attempt failed: Postgres is down until a probe connects."""
        with self._lock:
            self.reason = reason
            if self.down_since is None:
                self.down_since = time.monotonic()
                log.warning("%s: Postgres is unreachable (%s); calls fail with "
                            "DatabaseUnavailable (the services answer 503) until it is back",
                            self.name, reason)
        self._start_probe()

    def succeeded(self) -> None:
        """A connection was made: Postgres is up."""
        with self._lock:
            down_since, self.down_since = self.down_since, None
        if down_since is not None:
            log.info("%s: Postgres is reachable again after %.1fs", self.name,
                     time.monotonic() - down_since)

    def suspect(self) -> None:
        """A connection broke: find out at once whether Postgres is still there."""
        self._start_probe()

    def _start_probe(self) -> None:
        with self._lock:
            if self._probing:
                return
            self._probing = True
        threading.Thread(target=self._probe, name=f"{self.name}-probe", daemon=True).start()

    def _connect(self) -> None:
        # A query, not only a connection: a pooler accepts clients while Postgres is down.
        with psycopg.connect(self.url, connect_timeout=CONNECT_TIMEOUT,
                             **self.connect_kwargs) as conn:
            conn.execute("SELECT 1", prepare=False)

    def _probe(self) -> None:
        try:
            while True:
                try:
                    self.probe()
                except psycopg.Error as exc:
                    self.failed(first_line(exc))
                else:
                    self.succeeded()
                    return
                time.sleep(PROBE_INTERVAL)
        finally:
            with self._lock:
                self._probing = False


class Pool(ConnectionPool):
    """A connection pool with a Breaker: known outages are answered at once (see ``lend``).
    A ConnectionSource (core/connections.py)."""

    def __init__(self, url: str, *args: Any, breaker: Breaker, **kwargs: Any) -> None:
        self.url, self.breaker = url, breaker
        super().__init__(url, *args, **kwargs)

    def lend(self) -> Lending:
        """A connection, like ``connection()``; DatabaseUnavailable at once during an outage.

        Waiting for a connection is done in slices, so a request that started waiting before
        the outage was known gives up as soon as it is. A failure that looks like an outage
        (here, or in the caller's block) has the breaker find out at once.
        """
        return Lending(self)

    def suspect(self, exc: BaseException) -> None:
        """``exc`` (a driver error) may mean the database is gone: the breaker finds out."""
        if isinstance(exc, (PoolTimeout, psycopg.OperationalError)) and is_outage(exc):
            self.breaker.suspect()

    def _wait_for_connection(self) -> psycopg.Connection:
        for wait in waits(self.timeout - LEND_SLICE, self.breaker):
            with suppress(PoolTimeout):
                return self.getconn(timeout=wait)
        raise PoolTimeout(f"no connection after {self.timeout:.1f}s")


class Lending:
    """``Pool.lend``'s block. A class, not a generator: a single enqueue is mostly Python
    between two round trips, and a generator's context manager cost it several microseconds."""

    __slots__ = ("pool", "conn")

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    def __enter__(self) -> psycopg.Connection:
        pool = self.pool
        pool.breaker.check()
        try:
            try:  # an idle connection at once, the common case
                conn = pool.getconn(timeout=min(LEND_SLICE, pool.timeout))
            except PoolTimeout:
                conn = pool._wait_for_connection()
        except BaseException as exc:
            pool.suspect(exc)
            raise
        self.conn = conn
        return conn

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> Literal[False]:
        conn, pool = self.conn, self.pool
        try:
            try:
                if exc is None and not conn.autocommit:
                    conn.commit()
            finally:
                # putconn rolls back what a failed caller left open. No `with conn:` around
                # the block: its commit on an autocommit connection cost a tenth of a one-job
                # enqueue's Python time for nothing.
                pool.putconn(conn)
        except BaseException as raised:
            pool.suspect(raised)
            raise
        if exc is not None:
            pool.suspect(exc)
        return False


def waits(timeout: float, breaker: Breaker) -> Iterator[float]:
    """How long each try to get a pooled connection may wait: ``timeout`` in LEND_SLICEs,
    each after checking the breaker (which raises once Postgres is known to be down)."""
    deadline = time.monotonic() + timeout
    while True:
        breaker.check()
        left = deadline - time.monotonic()
        yield max(0.0, min(LEND_SLICE, left))
        if left <= LEND_SLICE:
            return


def make_pool(url: str, *, min_size: int = 1, max_size: int = 8, name: str = "bgjobs",
              open_wait: bool = False, timeout: float = 5.0,
              **connect_kwargs: Any) -> Pool:
    """An autocommit pool that opens lazily and survives Postgres restarts.

    Lending a connection costs no round trip unless it sat idle (see IDLE_CHECK_SECONDS).
    ``connect_kwargs`` go to every ``psycopg.connect``. Each new connection keeps prepared
    statements only if it reaches Postgres directly (``prepare_if_direct``), so the pool works
    through a pooler in transaction mode too.
    """
    kwargs = {"autocommit": True, "connect_timeout": CONNECT_TIMEOUT, "application_name": name,
              "cursor_factory": replan.Cursor, "prepare_threshold": None, **connect_kwargs}
    breaker = Breaker(url, name, **{k: v for k, v in kwargs.items() if k != "connect_timeout"})
    fixed_threshold = "prepare_threshold" in connect_kwargs

    def configure(conn: psycopg.Connection) -> None:
        if not fixed_threshold:
            prepare_if_direct(conn)
        mark_used(conn)
        breaker.succeeded()

    pool = Pool(
        url,
        breaker=breaker,
        min_size=min_size,
        max_size=max_size,
        name=name,
        open=False,
        timeout=timeout,
        # Give up a failed reconnection at once and open the breaker: requests get a 503
        # instead of piling up, and the breaker's probe notices when Postgres is back.
        reconnect_timeout=0,
        reconnect_failed=lambda _pool: breaker.failed("cannot connect to Postgres"),
        configure=configure,
        check=_check_if_idle,
        kwargs=kwargs,
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
