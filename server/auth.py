"""Who is calling: bearer tokens (API clients) and signed session cookies (browsers).

Shared by the API and the events service, so a browser signed in on one is signed in on both.
The cookie names a row of bgjobs_sessions, which names the token it was made from: sign-out ends
the row, and revoking the token ends every session made from it.
"""

from __future__ import annotations

import hmac
from typing import Any
from uuid import UUID

from itsdangerous import BadSignature, URLSafeTimedSerializer

from bgjobs.core.jobs import User
from bgjobs.core.store import Store
from bgjobs.core.store_users import hash_token
from bgjobs.server.errors import ApiError

SESSION_COOKIE = "bgjobs_session"
SESSION_MAX_AGE = 7 * 24 * 3600
_SALT = "bgjobs-session"


def make_session(secret: str, session_id: UUID) -> str:
    """The cookie value for a session (a row of bgjobs_sessions), signed."""
    return URLSafeTimedSerializer(secret, salt=_SALT).dumps({"sid": str(session_id)})


def read_session(secret: str, value: str) -> UUID | None:
    """The session id of a valid, unexpired cookie value; None otherwise."""
    try:
        data = URLSafeTimedSerializer(secret, salt=_SALT).loads(value, max_age=SESSION_MAX_AGE)
    except BadSignature:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("sid"), str):
        return None
    try:
        return UUID(data["sid"])
    except ValueError:
        return None


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer ...`` header."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def lookup(secret: str, authorization: str | None,
           cookie: str | None) -> tuple[str, dict[str, Any]] | None:
    """The named user query (and its args) that identifies the caller; None if nothing valid.

    A bearer token wins over a cookie, and a bad one is not rescued by a cookie: the client
    asked to be that token. The API (sync) and the events service (async) both run this rule.
    """
    if authorization:
        token = bearer_token(authorization)
        return ("user_for_token", {"token_hash": hash_token(token)}) if token else None
    if cookie and (session_id := read_session(secret, cookie)):
        return "session_user", {"session_id": session_id}
    return None


def authenticate(store: Store, secret: str, authorization: str | None,
                 cookie: str | None) -> User | None:
    """The user behind a bearer token, else behind a session cookie; None if neither is valid."""
    found = lookup(secret, authorization, cookie)
    return store.find_user(*found) if found else None


def check_metrics_token(expected: str | None, authorization: str | None) -> None:
    """Let the monitoring endpoints answer only to BGJOBS_METRICS_TOKEN; ApiError otherwise.

    A token of its own, not a user's: a scraper is no user, and the numbers cover every user.
    """
    if expected is None:
        raise ApiError(403, "forbidden", "metrics are off: set BGJOBS_METRICS_TOKEN on the "
                                         "server and send it as a bearer token")
    token = bearer_token(authorization)
    if token is None or not hmac.compare_digest(token.encode(), expected.encode()):
        raise ApiError(401, "unauthorized", "send Authorization: Bearer <BGJOBS_METRICS_TOKEN>",
                       headers={"WWW-Authenticate": 'Bearer realm="bgjobs-metrics"'})
