"""Cross-site request refusal for browsers that are signed in with the session cookie.

``SameSite=Lax`` keeps other *sites* from sending the cookie with their POSTs, but every port of
a host is the same site: a page on ``http://127.0.0.1:9999`` can make the browser post to the
API on ``:8000`` with the cookie. So a state-changing request that carries the session cookie
must show that it comes from the API's own origin, by its ``Origin`` header (every browser sends
it with a POST, PUT, PATCH or DELETE) or, failing that, its ``Referer``. Requests with an
``Authorization`` header are judged by that header alone: no page can make a browser add one.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Request

from bgjobs.server.errors import ApiError

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_DEFAULT_PORTS = {"http": "80", "https": "443"}


def refusal(method: str, *, has_cookie: bool, authorization: str | None, origin: str | None,
            referer: str | None, host: str, schemes: frozenset[str]) -> str | None:
    """Why this request must be refused as cross-site, or None when it may go on.

    ``host`` is the Host the request was sent to; ``schemes`` the schemes the API is served
    with (``https`` too behind a TLS proxy, see BGJOBS_COOKIE_SECURE).
    """
    if method not in UNSAFE_METHODS or not has_cookie or authorization:
        return None
    source, value = "Origin", origin
    if value is None:
        source, value = "Referer", referer
    if not value:
        return ("a signed-in browser request that changes something must come from this "
                "site's pages (no Origin or Referer header)")
    parts = urlsplit(value)
    if parts.scheme in schemes and _netloc(parts.scheme, parts.netloc) == _netloc(
            parts.scheme, host):
        return None
    return f"cross-site request refused: {source} {value[:200]!r} is not this site's origin"


def check(request: Request, *, has_cookie: bool, schemes: frozenset[str]) -> None:
    """A 403 ApiError when this Flask request must be refused as cross-site (see refusal)."""
    reason = refusal(request.method, has_cookie=has_cookie,
                     authorization=request.headers.get("Authorization"),
                     origin=request.headers.get("Origin"), referer=request.headers.get("Referer"),
                     host=request.host, schemes=schemes)
    if reason:
        raise ApiError(403, "forbidden", reason)


def _netloc(scheme: str, netloc: str) -> str:
    """``host[:port]`` in lower case, without the scheme's default port."""
    netloc = netloc.lower().rsplit("@", 1)[-1]
    default = _DEFAULT_PORTS.get(scheme)
    if default and netloc.endswith(f":{default}"):
        netloc = netloc[: -len(default) - 1]
    return netloc
