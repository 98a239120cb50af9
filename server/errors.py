"""The one error vocabulary of bgjobs's HTTP services: exception -> status, code, message.

The API (Flask) and the events service (Starlette) both answer every error as
``{"error": {"code": "...", "message": "..."}}`` (plus ``job_id`` on a 409 about a job), built
here; each framework only wraps the answer in its own response class. Nothing answers HTML or
leaks a traceback: unexpected errors are logged by the caller and answered with a generic 500.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from bgjobs.core.errors import (
    BgjobsError,
    Conflict,
    DatabaseUnavailable,
    InvalidInput,
    InvalidParams,
    InvalidRequest,
    NotFound,
    UnknownTask,
    UnreadableValue,
)

log = logging.getLogger(__name__)

#: Codes for the HTTP errors the frameworks raise themselves (routing, body size, methods).
HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    417: "expectation_failed",
    431: "headers_too_large",
    501: "not_implemented",
    503: "unavailable",
}
RETRY_AFTER_SECONDS = 5


class ApiError(BgjobsError):
    """An error a view raises on purpose: status, machine-readable code, human message."""

    def __init__(self, status: int, code: str, message: str, *,
                 headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.answer = Answer(status, code, message, headers or {}, extra)


@dataclass(frozen=True)
class Answer:
    """An error answer, framework-neutral."""

    status: int
    code: str
    message: str
    headers: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        error.update({k: v for k, v in self.extra.items() if v is not None})
        return {"error": error}


def answer_for(exc: BaseException) -> Answer | None:
    """The answer for one of bgjobs's exceptions; None for anything unexpected (a 500)."""
    if isinstance(exc, ApiError):
        return exc.answer
    if isinstance(exc, NotFound):
        return Answer(404, "not_found", str(exc))
    if isinstance(exc, Conflict):
        job_id = str(exc.job_id) if exc.job_id else None
        return Answer(409, "conflict", str(exc), extra={"job_id": job_id})
    if isinstance(exc, UnknownTask):
        # KeyError-style exceptions quote their message; show it plainly.
        return Answer(422, "unknown_type", str(exc).strip("'\""))
    if isinstance(exc, InvalidParams):
        return Answer(422, "invalid_params", str(exc))
    if isinstance(exc, InvalidRequest):
        return Answer(422, "invalid_request", str(exc))
    if isinstance(exc, InvalidInput):
        return Answer(422, "invalid_input", str(exc))
    if isinstance(exc, UnreadableValue):
        # A stored value, not the request: no 4xx (the client did nothing wrong), and not a
        # "rejected value" (nothing was written). Job reads never get here (core/rows.py).
        log.error("answering 500: %s", exc)
        return Answer(500, "unreadable_value", str(exc))
    if isinstance(exc, DatabaseUnavailable):
        log.warning("answering 503: %s", exc)
        return Answer(503, "database_unavailable", "the database is unavailable; retry shortly",
                      {"Retry-After": str(RETRY_AFTER_SECONDS)})
    return None


INTERNAL_ERROR = Answer(500, "internal_error", "internal server error (logged)")


def http_answer(status: int, method: str, path: str, description: str | None,
                headers: dict[str, str] | None = None) -> Answer:
    """The answer for an error the framework raised itself (no route, wrong method, ...)."""
    if status == 404:
        message = f"no such route: {path}"
    elif status == 405:
        message = f"{method} is not allowed on {path}"
    else:
        message = description or "request refused"
    return Answer(status, HTTP_CODES.get(status, "http_error"), message, headers or {})


def unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message,
                    headers={"WWW-Authenticate": 'Bearer realm="bgjobs"'})


def raw_response(status: int, reason: str, message: str,
                 headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    """A whole HTTP/1.1 error response, for errors answered before any app sees the request.

    gunicorn answers requests it cannot parse (bad Content-Length, a NUL or bare CR in a
    header, obs-fold, a request line or headers too long) itself; with this they get the
    same JSON error as everything else (see bgjobs.server.gunicorn_conf).
    """
    body = json.dumps(Answer(status, HTTP_CODES.get(status, "bad_request"),
                             message or reason).body()).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "X-Content-Type-Options: nosniff\r\n"
            + "".join(f"{name}: {value}\r\n" for name, value in headers) + "\r\n")
    return head.encode("latin-1") + body
