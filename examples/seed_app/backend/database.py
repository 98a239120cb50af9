"""The app's own database access: one pool per process, on DATABASE_URL."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from uuid import UUID

import psycopg
from psycopg_pool import ConnectionPool
from werkzeug.security import check_password_hash, generate_password_hash

_lock = threading.Lock()
_pool: tuple[int, ConnectionPool] | None = None


def database_url() -> str:
    url = os.environ.get("DATABASE_URL")
    if not url:
        raise RuntimeError("set DATABASE_URL (run.py does it for you)")
    return url


@contextmanager
def connection() -> Iterator[psycopg.Connection]:
    """A pooled connection in a transaction: committed when the block ends, else rolled back."""
    global _pool
    with _lock:
        if _pool is None or _pool[0] != os.getpid():  # gunicorn forks after import
            _pool = (os.getpid(), ConnectionPool(database_url(), min_size=1, max_size=4,
                                                 open=True, name="seed-app"))
        pool = _pool[1]
    with pool.connection() as conn:
        yield conn


def close() -> None:
    """Close this process's pool (gunicorn's worker_exit)."""
    global _pool
    with _lock:
        current, _pool = _pool, None
    if current is not None and current[0] == os.getpid():
        current[1].close()


def check_login(email: str, password: str) -> int | None:
    """The id of the user with this email and password, else None."""
    with connection() as conn:
        row = conn.execute("SELECT id, password_hash FROM users WHERE email = %s",
                           (email,)).fetchone()
    if row is None or not check_password_hash(row[1], password):
        return None
    return row[0]


def create_user(conn: psycopg.Connection, email: str, password: str) -> int | None:
    """A new user's id; None if the email is taken."""
    row = conn.execute(
        "INSERT INTO users (email, password_hash) VALUES (%s, %s) "
        "ON CONFLICT (email) DO NOTHING RETURNING id",
        (email, generate_password_hash(password))).fetchone()
    return row[0] if row else None


def log_activity(conn: psycopg.Connection, user_id: int, action: str, job_id: UUID) -> None:
    conn.execute("INSERT INTO activity (user_id, action, job_id) VALUES (%s, %s, %s)",
                 (user_id, action, job_id))
