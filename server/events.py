"""The events service: live job states over server-sent events (Starlette + sse-starlette).

``GET /events/jobs/<id>`` streams one job until it finishes; ``GET /events/jobs`` streams every
change to the caller's jobs. Each event's data is the job as the API shows it and its ``id:`` is
the job's version. Runs under gunicorn's asgi worker (``bgjobs events``); see docs/events.md.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from typing import Any
from uuid import UUID

from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from server import config as config_mod
from server.auth import SESSION_COOKIE
from server.db import DatabaseUnavailable, database_url
from server.events_db import EventsDb, make_pool
from server.listener import Listener, Subscription
from server.store import FINISHED, Job, User

log = logging.getLogger(__name__)

PING_SECONDS = 15
RETRY_MS = 2000  # how long a browser waits before reconnecting a dropped stream
_HTTP_CODES = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed"}


class EventsError(Exception):
    """An answer given instead of a stream: status, machine-readable code, message."""

    def __init__(self, status: int, code: str, message: str,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def error_response(status: int, code: str, message: str,
                   headers: Mapping[str, str] | None = None) -> JSONResponse:
    """The API's error format: ``{"error": {"code", "message"}}``."""
    return JSONResponse({"error": {"code": code, "message": message}}, status, headers)


class SubscriptionStream(EventSourceResponse):
    """An SSE response that frees its subscription however the response ends."""

    def __init__(self, listener: Listener, sub: Subscription,
                 content: AsyncIterator[ServerSentEvent]) -> None:
        super().__init__(content, ping=PING_SECONDS, headers={"Cache-Control": "no-cache"})
        self.listener, self.sub = listener, sub

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.listener.unsubscribe(self.sub)


# Views -----------------------------------------------------------------------------------


async def job_events(request: Request) -> Response:
    """One job: its state now, each change, the final state; then the stream ends."""
    user = await _caller(request)
    job_id = _job_id(request.path_params["job_id"])
    last_seen = _last_event_id(request)
    listener: Listener = request.app.state.listener
    # Subscribe before reading the row: a change committed in between is not lost.
    sub = listener.subscribe(job_ids=frozenset({job_id}))
    try:
        job = await request.app.state.db.get_job(job_id, user.id)
    except BaseException:
        listener.unsubscribe(sub)
        raise
    if job is None:
        listener.unsubscribe(sub)
        raise EventsError(404, "not_found", f"no job {job_id}")
    listener.publish(job)  # later progress-only notifications apply to this row
    sub.sent(job)
    fresh = last_seen is None or job.version > last_seen
    if job.status in FINISHED and not fresh:
        # The client has the final state; 204 tells EventSource to stop reconnecting.
        listener.unsubscribe(sub)
        return Response(status_code=204)
    return SubscriptionStream(listener, sub, _job_stream(sub, job if fresh else None))


async def _job_stream(sub: Subscription, first: Job | None) -> AsyncIterator[ServerSentEvent]:
    if first is None:
        yield ServerSentEvent(comment="up to date", retry=RETRY_MS)
    else:
        yield _event(first, retry=RETRY_MS)
        if first.status in FINISHED:
            return
    while jobs := await sub.next():
        for job in jobs:
            yield _event(job)
            if job.status in FINISHED:
                return


async def user_events(request: Request) -> Response:
    """Every change to any of the caller's jobs, new ones included, until the client leaves."""
    user = await _caller(request)
    listener: Listener = request.app.state.listener
    sub = listener.subscribe(user_id=user.id)
    return SubscriptionStream(listener, sub, _user_stream(sub))


async def _user_stream(sub: Subscription) -> AsyncIterator[ServerSentEvent]:
    # A first comment sends the headers now, so the browser's `open` fires at once.
    yield ServerSentEvent(comment="subscribed", retry=RETRY_MS)
    while jobs := await sub.next():
        for job in jobs:
            yield _event(job)


def _event(job: Job, retry: int | None = None) -> ServerSentEvent:
    return ServerSentEvent(data=json.dumps(job.to_json(), separators=(",", ":")),
                           id=str(job.version), retry=retry)


async def healthz(request: Request) -> Response:
    connected = request.app.state.listener.connected
    return JSONResponse({"status": "ok" if connected else "degraded",
                         "listen_connected": connected}, 200 if connected else 503)


async def stats(request: Request) -> Response:
    return JSONResponse({"pid": os.getpid(), **request.app.state.listener.stats()})


async def _caller(request: Request) -> User:
    db: EventsDb = request.app.state.db
    user = await db.authenticate(request.app.state.secret, request.headers.get("authorization"),
                                 request.cookies.get(SESSION_COOKIE))
    if user is None:
        raise EventsError(401, "unauthorized",
                          "sign in: send `Authorization: Bearer <token>` or the session cookie",
                          {"WWW-Authenticate": 'Bearer realm="bgjobs"'})
    return user


def _job_id(raw: str) -> UUID:
    try:
        return UUID(raw)
    except ValueError:
        raise EventsError(404, "not_found", f"no job {raw}") from None


def _last_event_id(request: Request) -> int | None:
    raw = request.headers.get("last-event-id", "").strip()
    return int(raw) if raw.isdigit() else None


# Errors ----------------------------------------------------------------------------------


async def _events_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, EventsError)
    return error_response(exc.status, exc.code, exc.message, exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = (f"no such route: {request.url.path}" if exc.status_code == 404
               else f"{request.method} is not allowed on {request.url.path}"
               if exc.status_code == 405 else str(exc.detail))
    return error_response(exc.status_code, _HTTP_CODES.get(exc.status_code, "http_error"),
                          message, exc.headers)


async def _db_down(request: Request, exc: Exception) -> Response:
    log.warning("answering 503: %s", exc)
    return error_response(503, "database_unavailable",
                          "the database is unavailable; retry shortly", {"Retry-After": "5"})


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s", request.url.path)
    return error_response(500, "internal_error", "internal server error (logged)")


# The app ---------------------------------------------------------------------------------


def default_origins(cfg: config_mod.Config) -> list[str]:
    """The API's origin, by its bind and by the names a browser uses for a local address."""
    host, _, port = cfg.api_bind.rpartition(":")
    origins = [f"http://{cfg.api_bind}"]
    if host in ("127.0.0.1", "localhost", "0.0.0.0", "::", "[::]", ""):
        origins += [f"http://localhost:{port}", f"http://127.0.0.1:{port}"]
    return list(dict.fromkeys(origins))


def create_app(url: str | None = None) -> Starlette:
    """The events app; ``url`` defaults to DATABASE_URL (or the running embedded cluster)."""
    cfg = config_mod.load()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        db_url = url or database_url(cfg)
        pool = make_pool(db_url, max_size=cfg.pool_max)
        await pool.open(wait=False)
        listener = Listener(db_url, EventsDb(pool))
        app.state.db, app.state.listener = listener.db, listener
        task = asyncio.create_task(listener.run(), name="bgjobs-events-listener")
        task.add_done_callback(_listener_exited)
        try:
            yield
        finally:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
            await pool.close()

    app = Starlette(
        routes=[
            Route("/events/jobs/{job_id}", job_events, methods=["GET"]),
            Route("/events/jobs", user_events, methods=["GET"]),
            Route("/events/healthz", healthz, methods=["GET"]),
            Route("/events/stats", stats, methods=["GET"]),
        ],
        middleware=[
            Middleware(CORSMiddleware, allow_origins=list(cfg.cors_origins)
                       or default_origins(cfg), allow_credentials=True, allow_methods=["GET"],
                       allow_headers=["Authorization", "Last-Event-ID", "Cache-Control"],
                       max_age=600),
        ],
        exception_handlers={
            EventsError: _events_error,
            HTTPException: _http_error,
            DatabaseUnavailable: _db_down,
            Exception: _unexpected,
        },
        lifespan=lifespan,
    )
    app.state.secret = cfg.secret_key()
    return app


def _listener_exited(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the listener stopped: %r; live updates are off until restart",
                  task.exception())


def drain_on_sigterm(worker: Any) -> None:
    """gunicorn ``post_worker_init`` hook: end the SSE streams when the worker is told to stop.

    The asgi worker waits up to graceful_timeout for open connections, and SSE streams never
    end by themselves. Closing the subscriptions ends each stream properly (its last chunk
    sent), and browsers reconnect to a live worker.
    """

    def on_sigterm() -> None:
        listener = getattr(worker.asgi.state, "listener", None)
        if listener is not None:
            listener.close_all()
        worker.handle_exit_signal()

    worker.loop.add_signal_handler(signal.SIGTERM, on_sigterm)
