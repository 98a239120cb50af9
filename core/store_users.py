"""Users, their API tokens and their browser sessions (tokens are stored hashed)."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any
from uuid import UUID

import psycopg

from bgjobs.core.connections import ConnectionSource, lend
from bgjobs.core.errors import Conflict, InvalidInput, NotFound
from bgjobs.core.jobs import User
from bgjobs.core.queries import q
from bgjobs.core.rows import dict_rows, record_row


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class UserStore:
    """Create users and tokens, find a request's user, start and end sessions."""

    def __init__(self, source: ConnectionSource) -> None:
        self.source = source

    def connection(self, conn: psycopg.Connection | None = None
                   ) -> AbstractContextManager[psycopg.Connection]:
        """The caller's connection if given (their transaction), else one the source lends."""
        return lend(self.source, conn)

    def create_user(self, name: str, user_id: int | None = None, *,
                    is_admin: bool = False) -> tuple[User, str]:
        """A new user and their first API token (returned in clear, stored hashed).

        ``user_id`` makes the user with that id: in an app's database (see
        ``host_users_table``), the id of the app's user this bgjobs user is.
        """
        if user_id is None and self.host_users_table():
            # Its own numbering would link the user to whichever app user has that id.
            raise InvalidInput("bgjobs's users are the app's users in this database: "
                               "give the id of the app's user")
        token = "bgj_" + secrets.token_urlsafe(32)
        query, args = (("insert_user", {"name": name, "is_admin": is_admin}) if user_id is None
                       else ("insert_user_with_id",
                             {"name": name, "id": user_id, "is_admin": is_admin}))
        with self.connection() as c, c.transaction(), c.cursor(row_factory=record_row(User)) as cur:
            try:
                user = cur.execute(q(query), args).fetchone()
            except psycopg.errors.UniqueViolation as exc:
                if exc.diag.constraint_name == "bgjobs_users_pkey":
                    raise Conflict(f"user id {user_id} already has a bgjobs user") from exc
                raise Conflict(f"user {name!r} already exists") from exc
            except psycopg.errors.CheckViolation as exc:
                raise InvalidInput(
                    f"bad user name {name!r}: use 1-64 letters, digits, or . _ @ -") from exc
            except psycopg.errors.ForeignKeyViolation as exc:
                raise NotFound(f"the app's users table has no user with id {user_id}") from exc
            assert user is not None
            c.execute(q("insert_token"), {"user_id": user.id, "token_hash": hash_token(token)})
        return user, token

    def create_token(self, name: str) -> tuple[User, str]:
        """Another API token for an existing user."""
        token = "bgj_" + secrets.token_urlsafe(32)
        with self.connection() as c, c.transaction(), c.cursor(row_factory=record_row(User)) as cur:
            user = cur.execute(q("get_user_by_name"), {"name": name}).fetchone()
            if user is None:
                raise NotFound(f"no user {name!r}")
            c.execute(q("insert_token"), {"user_id": user.id, "token_hash": hash_token(token)})
        return user, token

    def host_users_table(self) -> str | None:
        """The app's users table that bgjobs's users are rows of; None when stand-alone."""
        with self.connection() as c:
            row = c.execute(q("host_users_table")).fetchone()
        return row[0] if row else None

    def get_user(self, name: str) -> User:
        with self.connection() as c, c.cursor(row_factory=record_row(User)) as cur:
            user = cur.execute(q("get_user_by_name"), {"name": name}).fetchone()
        if user is None:
            raise NotFound(f"no user {name!r}")
        return user

    def find_user(self, query: str, args: dict[str, Any]) -> User | None:
        """Run one of the named user lookups (see ``server.auth.lookup``)."""
        with self.connection() as c, c.cursor(row_factory=record_row(User)) as cur:
            return cur.execute(q(query), args).fetchone()

    def user_for_token(self, token: str) -> User | None:
        return self.find_user("user_for_token", {"token_hash": hash_token(token)})

    def user_for_session(self, session_id: UUID) -> User | None:
        """The user of a live session (not ended or expired, its token not revoked)."""
        return self.find_user("session_user", {"session_id": session_id})

    def start_session(self, user: User, seconds: int) -> UUID:
        """A session for ``user``, signed in with the token ``user.token_id``."""
        with self.connection() as c:
            row = c.execute(q("start_session"), {"user_id": user.id, "token_id": user.token_id,
                                                 "seconds": seconds}).fetchone()
        assert row is not None
        return row[0]

    def end_session(self, session_id: UUID) -> bool:
        """Sign-out: False if the session had already ended."""
        with self.connection() as c:
            return c.execute(q("end_session"), {"session_id": session_id}).rowcount == 1

    def revoke_tokens(self, name: str) -> int:
        user = self.get_user(name)
        with self.connection() as c:
            return len(c.execute(q("revoke_tokens"), {"user_id": user.id}).fetchall())

    def set_admin(self, name: str, is_admin: bool) -> User:
        with self.connection() as c, c.cursor(row_factory=record_row(User)) as cur:
            user = cur.execute(q("set_admin"), {"name": name, "is_admin": is_admin}).fetchone()
        if user is None:
            raise NotFound(f"no user {name!r}")
        return user

    def user_names(self, ids: Iterator[int] | Sequence[int]) -> dict[int, str]:
        wanted = sorted(set(ids))
        if not wanted:
            return {}
        with self.connection() as c, c.cursor(row_factory=dict_rows) as cur:
            rows = cur.execute(q("user_names"), {"ids": wanted}).fetchall()
        return {r["id"]: r["name"] for r in rows}
