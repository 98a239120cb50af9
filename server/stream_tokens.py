"""Signed stream tokens: a host app's signed-in user opens an events stream with no bgjobs login.

The Flask extension (``BgJobs.stream_url``) puts a token in the stream's URL; the events service
accepts it as it accepts a session. A token names the user, the scope (one job, or every job of
the user) and an expiry, and is signed with HMAC-SHA256 under BGJOBS_SECRET_KEY, so the events
service checks it without the database and without any bgjobs user. An EventSource reconnects to
the same URL, so reconnects work until the token expires; then the page asks its app for a new
URL (docs/flask.md).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from itsdangerous import BadSignature, URLSafeSerializer

from bgjobs.server import errors
from bgjobs.server.errors import ApiError

log = logging.getLogger(__name__)

#: The query parameter that carries a token.
PARAM = "token"
_SALT = "bgjobs-stream"


@dataclass(frozen=True)
class Grant:
    """What a valid token allows: one user's stream of one job, or of all their jobs."""

    user_id: int
    job_id: UUID | None
    expires_at: int

    def allows(self, raw_job_id: str | None) -> bool:
        """Whether this grant covers the stream of ``raw_job_id`` (None: the user's stream)."""
        if self.job_id is None:
            return True  # every job of the user; the events service checks the job is theirs
        if raw_job_id is None:
            return False
        try:
            return UUID(raw_job_id) == self.job_id
        except ValueError:
            return False


def _serializer(secret: str) -> URLSafeSerializer:
    return URLSafeSerializer(secret, salt=_SALT, signer_kwargs={"digest_method": hashlib.sha256})


def issue(secret: str, user_id: int, job_id: UUID | None, seconds: int,
          now: float | None = None) -> tuple[str, int]:
    """A token for ``user_id``'s stream of ``job_id`` (None: all their jobs); its expiry."""
    if not isinstance(user_id, int) or isinstance(user_id, bool):
        raise TypeError(f"a stream token's user id is an int, got {user_id!r}")
    expires = int(time.time() if now is None else now) + seconds
    payload = {"u": user_id, "j": str(job_id) if job_id else None, "e": expires}
    return _serializer(secret).dumps(payload), expires


def verify(secret: str, token: str, now: float | None = None) -> Grant:
    """The grant of a valid, unexpired token; else a 401 ApiError, and a warning in the log
    that says why (never the token): the page only sees the 401, and renews in vain when the
    cause is this service's setup (another BGJOBS_SECRET_KEY than the app's, a clock apart)."""
    serializer = _serializer(secret)
    try:
        data: Any = serializer.loads(token)
        user_id, raw_job, expires = data["u"], data["j"], data["e"]
        job_id = UUID(raw_job) if raw_job is not None else None
        if not isinstance(user_id, int) or not isinstance(expires, int):
            raise TypeError("user id and expiry are ints")
    except BadSignature:
        raise _invalid(_bad_signature(serializer, token)) from None
    except (KeyError, TypeError, ValueError):
        raise _invalid("malformed (signed with this service's key, but not a stream token)"
                       ) from None
    moment = time.time() if now is None else now
    if expires <= moment:
        log.warning("stream token of user %s refused: it expired %d s ago; the page asks the "
                    "app for a new stream URL (if fresh ones are refused so too, the app's and "
                    "this service's clocks are apart)", user_id, moment - expires)
        raise errors.unauthorized("the stream token has expired; ask the app for a new stream URL")
    return Grant(user_id, job_id, expires)


def _bad_signature(serializer: URLSafeSerializer, token: str) -> str:
    """Why a token whose signature failed was refused: a well-formed token signed with another
    key (or altered), or no token at all."""
    _, payload = serializer.loads_unsafe(token)
    if isinstance(payload, dict) and set(payload) == {"u", "j", "e"}:
        return ("its signature does not match this service's BGJOBS_SECRET_KEY (signed with "
                "another key, or altered): the app and the events service must share it")
    return "malformed (not a stream URL's token)"


def _invalid(why: str) -> ApiError:
    log.warning("stream token refused: %s", why)
    return errors.unauthorized("invalid stream token; ask the app for a new stream URL")


def user_for(secret: str, token: str, raw_job_id: str | None) -> int:
    """The user a token lets open the stream of ``raw_job_id`` (None: the user's stream).

    401 for a bad or expired token, 403 for a token made for another stream. Whether the job
    belongs to that user is the stream's own check (404 otherwise, as for any caller).
    """
    grant = verify(secret, token)
    if not grant.allows(raw_job_id):
        raise ApiError(403, "forbidden", f"this stream token is for job {grant.job_id} only")
    return grant.user_id
