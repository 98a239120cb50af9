"""The one place that turns errors into HTTP status codes and the API's JSON error format.

Every error answer is ``{"error": {"code": "...", "message": "..."}}`` (plus ``job_id`` on a
409 about a job). Nothing answers HTML or leaks a traceback: unexpected errors are logged here
and answered with a generic 500.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from flask import Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from server.db import DatabaseUnavailable
from server.store import Conflict, InvalidInput, NotFound
from worker.registry import InvalidParams, UnknownTask

log = logging.getLogger(__name__)

# Codes for the HTTP errors werkzeug raises itself (routing, body size, methods).
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


class ApiError(Exception):
    """An error a view raises on purpose: status, machine-readable code, human message."""

    def __init__(self, status: int, code: str, message: str, *,
                 headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.extra = extra


def unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message,
                    headers={"WWW-Authenticate": 'Bearer realm="bgjobs"'})


def error_response(status: int, code: str, message: str, *,
                   headers: dict[str, str] | None = None, **extra: Any) -> Response:
    body: dict[str, Any] = {"code": code, "message": message}
    body.update({k: v for k, v in extra.items() if v is not None})
    response = jsonify({"error": body})
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def register(app: Flask) -> None:
    """Install the handlers on ``app``."""

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        return error_response(exc.status, exc.code, exc.message, headers=exc.headers, **exc.extra)

    @app.errorhandler(NotFound)
    def _not_found(exc: NotFound) -> Response:
        return error_response(404, "not_found", str(exc))

    @app.errorhandler(Conflict)
    def _conflict(exc: Conflict) -> Response:
        job_id = str(exc.job_id) if exc.job_id else None
        return error_response(409, "conflict", str(exc), job_id=job_id)

    @app.errorhandler(UnknownTask)
    def _unknown_task(exc: UnknownTask) -> Response:
        # KeyError-style exceptions quote their message; show it plainly.
        return error_response(422, "unknown_type", str(exc).strip("'\""))

    @app.errorhandler(InvalidParams)
    def _invalid_params(exc: InvalidParams) -> Response:
        return error_response(422, "invalid_params", str(exc))

    @app.errorhandler(InvalidInput)
    def _invalid_input(exc: InvalidInput) -> Response:
        return error_response(422, "invalid_input", str(exc))

    @app.errorhandler(psycopg.DataError)
    def _data_error(exc: psycopg.DataError) -> Response:
        # Values Postgres refuses to store (a NUL character in JSON text, say): the client's
        # input, not our bug, and the statement changed nothing.
        first = (str(exc).strip().splitlines() or ["invalid value"])[0]
        return error_response(422, "invalid_input", f"the database rejected a value: {first}")

    @app.errorhandler(DatabaseUnavailable)
    def _db_down(exc: DatabaseUnavailable) -> Response:
        log.warning("answering 503: %s", exc)
        return error_response(503, "database_unavailable",
                              "the database is unavailable; retry shortly",
                              headers={"Retry-After": "5"})

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        status = exc.code or 500
        headers = {}
        if status == 405 and exc.get_response().headers.get("Allow"):
            headers["Allow"] = exc.get_response().headers["Allow"]
        return error_response(status, _HTTP_CODES.get(status, "http_error"),
                              _http_message(exc), headers=headers)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error: %s", exc)
        return error_response(500, "internal_error", "internal server error (logged)")


def _http_message(exc: HTTPException) -> str:
    if exc.code == 404:
        return f"no such route: {request.path}"
    if exc.code == 405:
        return f"{request.method} is not allowed on {request.path}"
    if exc.code == 413:
        limit = current_app.config.get("MAX_CONTENT_LENGTH")
        return f"request body too large (the limit is {limit} bytes)"
    return exc.description or exc.name
