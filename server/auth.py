"""Who is calling: bearer tokens (API clients) and signed session cookies (browsers).

Shared by the API and the events service, so a browser signed in on one is signed in on both.
A session names the token it was made from; revoking the token ends the session too.
"""

from __future__ import annotations

from itsdangerous import BadSignature, URLSafeTimedSerializer

from server.store import Store, User

SESSION_COOKIE = "bgjobs_session"
SESSION_MAX_AGE = 7 * 24 * 3600
_SALT = "bgjobs-session"


def make_session(secret: str, user: User) -> str:
    """The cookie value for a user signed in with one of their tokens."""
    return URLSafeTimedSerializer(secret, salt=_SALT).dumps({"uid": user.id, "tid": user.token_id})


def read_session(secret: str, value: str) -> tuple[int, int] | None:
    """(user_id, token_id) from a valid, unexpired cookie value; None otherwise."""
    try:
        data = URLSafeTimedSerializer(secret, salt=_SALT).loads(value, max_age=SESSION_MAX_AGE)
    except BadSignature:
        return None
    if not isinstance(data, dict):
        return None
    uid, tid = data.get("uid"), data.get("tid")
    if not isinstance(uid, int) or not isinstance(tid, int):
        return None
    return uid, tid


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer ...`` header."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def authenticate(store: Store, secret: str, authorization: str | None,
                 cookie: str | None) -> User | None:
    """The user behind a bearer token, else behind a session cookie; None if neither is valid.

    A bad bearer token is not rescued by a cookie: the client asked to be that token.
    """
    if authorization:
        token = bearer_token(authorization)
        return store.user_for_token(token) if token else None
    if cookie:
        session = read_session(secret, cookie)
        if session:
            return store.user_for_session(*session)
    return None
