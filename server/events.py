"""The events service: live job states over server-sent events (Starlette, gunicorn asgi).

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
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any
from uuid import UUID

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from bgjobs.core import config as config_mod
from bgjobs.core.db import database_url, direct_url
from bgjobs.core.errors import BgjobsError
from bgjobs.core.jobs import FINISHED, Job, User, parse_job_id
from bgjobs.server import auth, errors, stream_tokens, workflow_stream
from bgjobs.server.auth import SESSION_COOKIE
from bgjobs.server.broadcast import Broadcaster, Credential, State, Subscription
from bgjobs.server.errors import ApiError
from bgjobs.server.events_db import EventsDb, make_pool
from bgjobs.server.fanout import Fanout, Lane

log = logging.getLogger(__name__)

PING_SECONDS = 15
RETRY_MS = 2000  # how long a browser waits before reconnecting a dropped stream


class SubscriptionStream(Response):
    """A text/event-stream response fed by one subscription; frees it however the response ends.

    Written for the fan-out: once the headers and the first event are out, the server's
    transport (when it lends it) goes to the subscription, and later events are written by
    the fan-out's batch (server/fanout.py), not by this task; without it, or for a slow
    reader, a state reaches a stream as one ``send`` of bytes encoded once for all streams.
    A stream costs one task more than its request (the disconnect watcher). Keep-alive pings
    come from Broadcaster.keepalive.
    """

    HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"),
               (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]

    def __init__(self, request: Request, sub: Subscription, content: AsyncIterator[bytes],
                 ends_on_final: bool = False, direct: bool = True,
                 lane: Lane | None = None) -> None:
        self.status_code = 200
        self.raw_headers = list(self.HEADERS)  # no content-length: the body has no end yet
        self.background = None
        self.broadcaster: Broadcaster = state(request).broadcaster
        self.fanout: Fanout = state(request).fanout
        self.sub, self.content, self.ends_on_final = sub, content, ends_on_final
        # False: every state goes through this task (the workflow stream adds its summaries).
        self.direct = direct
        self.lane = lane  # a one-job stream's (server/fanout.py)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        watcher = asyncio.create_task(self._watch(receive))
        wire = (self.fanout.wire(scope, self.ends_on_final, self.lane) if self.direct
                else None)
        try:
            await send({"type": "http.response.start", "status": self.status_code,
                        "headers": self.raw_headers})
            if scope.get("method") != "HEAD":
                async for chunk in self.content:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    # The headers are out: from now on the fan-out may write to the socket.
                    self.sub.wire = wire
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            self.sub.wire = None
            watcher.cancel()
            self.broadcaster.unsubscribe(self.sub)

    async def _watch(self, receive: Receive) -> None:
        """End the stream as soon as the client hangs up."""
        while (await receive())["type"] != "http.disconnect":
            pass
        self.sub.close()


# Views -----------------------------------------------------------------------------------


async def job_events(request: Request) -> Response:
    """One job: its state now, each change, the final state; then the stream ends."""
    _check_room(request)
    user_id, credential = await _identify(request, request.path_params["job_id"])
    job_id = parse_job_id(request.path_params["job_id"])
    last_seen = _last_event_id(request)
    broadcaster: Broadcaster = state(request).broadcaster
    # Subscribe before reading the row: a change committed in between is not lost.
    sub = broadcaster.subscribe(job_ids=frozenset({job_id}), credential=credential)
    try:
        job = await state(request).db.get_job(job_id, user_id)
    except BaseException:
        broadcaster.unsubscribe(sub)
        raise
    if job is None:
        broadcaster.unsubscribe(sub)
        raise ApiError(404, "not_found", f"no job {job_id}")
    broadcaster.publish(job)  # later progress-only notifications apply to this row
    sub.sent(job)
    # A Last-Event-ID above the row's version means the row went back (a restore, a
    # failover): the client's state is not this one, so it gets the current state too.
    fresh = last_seen != job.version
    if job.status in FINISHED and not fresh:
        # The client has the final state; 204 tells EventSource to stop reconnecting.
        broadcaster.unsubscribe(sub)
        return Response(status_code=204)
    return SubscriptionStream(request, sub, _job_stream(sub, job if fresh else None),
                              ends_on_final=True,
                              lane=broadcaster.lane(job_id, state(request).fanout))


async def _job_stream(sub: Subscription, first: Job | None) -> AsyncIterator[bytes]:
    if first is None:
        yield b": up to date\r\n" + RETRY
    else:
        yield RETRY + encoded(first)
        if first.status in FINISHED:
            return
    while (jobs := await sub.next()) or not sub.closed:
        if not jobs:
            yield PING
            continue
        # One stream, one job: a list of one state (its latest), sent in one write.
        job = jobs[-1]
        yield encoded(job)
        if job.status in FINISHED:
            return


async def user_events(request: Request) -> Response:
    """Every change to any of the caller's jobs, new ones included, until the client leaves."""
    _check_room(request)
    user_id, credential = await _identify(request, None)
    broadcaster: Broadcaster = state(request).broadcaster
    sub = broadcaster.subscribe(user_id=user_id, credential=credential)
    return SubscriptionStream(request, sub, _user_stream(sub))


async def _user_stream(sub: Subscription) -> AsyncIterator[bytes]:
    # A first comment sends the headers now, so the browser's `open` fires at once.
    yield b": subscribed\r\n" + RETRY
    while (jobs := await sub.next()) or not sub.closed:
        # Every waiting job in one write; nothing waiting means a keep-alive ping is due.
        yield b"".join(encoded(job) for job in jobs) if jobs else PING


async def all_events(request: Request) -> Response:
    """Every change to every job (admins only), from the notifications; for the operator view."""
    user = await _caller(request)
    if not user.is_admin:
        raise ApiError(403, "forbidden", "the all-jobs stream is for admins")
    broadcaster: Broadcaster = state(request).broadcaster
    sub = broadcaster.subscribe_all()
    return SubscriptionStream(request, sub, _user_stream(sub))


async def workflow_events(request: Request) -> Response:
    """One workflow: its jobs' states and a summary, then each change; ends when it finishes."""
    _check_room(request)
    # A stream token for all the user's jobs covers their workflows; one for a job does not.
    user_id, credential = await _caller_id(request, None)
    raw = request.path_params["workflow_id"]
    try:
        workflow_id = UUID(raw)
    except ValueError:
        raise ApiError(404, "not_found", f"no workflow {raw!r}: workflow ids are UUIDs") from None
    db: EventsDb = request.app.state.db
    opened = await workflow_stream.open_stream(
        request.app.state.broadcaster, db, workflow_id, user_id, credential,
        request.headers.get("last-event-id", ""))
    if opened is None:
        return Response(status_code=204)  # the client has the final state
    return SubscriptionStream(request, opened.sub,
                              workflow_stream.stream(opened, db, encoded, RETRY, PING),
                              direct=False)


RETRY = f"retry: {RETRY_MS}\r\n\r\n".encode()
PING = b": ping\r\n\r\n"
#: Encoded events by (kind, job id, version): a state is encoded once, however many streams
#: send it. The kind keeps a whole row (Job) apart from a notification's Change (all-jobs).
_encoded: OrderedDict[tuple[type, UUID, int, Any], bytes] = OrderedDict()
ENCODED_KEPT = 4096


def encoded(job: State) -> bytes:
    """The SSE event of this job state (its version as the id), encoded once per process.

    A version names one state of one job, so every stream that sends it shares the bytes;
    the first encoding of a version wins (a state derived from a notification may carry an
    older ``updated_at`` than the row, see docs/events.md).
    """
    # updated_at too: a row that went back to an older version (a restore) is a new state.
    key = (type(job), job.id, job.version, getattr(job, "updated_at", None))
    data = _encoded.get(key)
    if data is None:
        body = json.dumps(job.to_json(), separators=(",", ":"))
        data = f"id: {job.version}\r\ndata: {body}\r\n\r\n".encode()
        _encoded[key] = data
        if len(_encoded) > ENCODED_KEPT:
            _encoded.popitem(last=False)
    return data


async def healthz(request: Request) -> Response:
    connected = state(request).broadcaster.connected
    return JSONResponse({"status": "ok" if connected else "degraded",
                         "listen_connected": connected}, 200 if connected else 503)


async def stats(request: Request) -> Response:
    auth.check_metrics_token(state(request).metrics_token, request.headers.get("authorization"))
    return JSONResponse({"pid": os.getpid(), **state(request).broadcaster.stats(),
                         **state(request).fanout.stats()})


def _check_room(request: Request) -> None:
    """Refuse a new stream once this process holds BGJOBS_EVENTS_CONNECTIONS of them."""
    cap = state(request).max_streams
    if state(request).broadcaster.open_streams >= cap:
        raise ApiError(503, "too_many_streams",
                       f"this events process already holds {cap} streams; retry shortly",
                       headers={"Retry-After": str(errors.RETRY_AFTER_SECONDS)})


def state(request: Request) -> Any:
    """The service's state: its app's, or what a host app mounting the streams put in the scope
    (bgjobs.asgi), with ``identify`` then saying who the caller is."""
    return request.scope.get(STATE_SCOPE_KEY) or request.app.state


#: Where bgjobs.asgi puts the streams' state in the scope of a host app's request.
STATE_SCOPE_KEY = "bgjobs.events"


async def _identify(request: Request, raw_job_id: str | None) -> tuple[int, Credential | None]:
    """The caller's user id and credential: the host app's (bgjobs.asgi), else ``_caller_id``."""
    identify = getattr(state(request), "identify", None)
    if identify is not None:
        return await identify(request), None
    return await _caller_id(request, raw_job_id)


async def _caller(request: Request) -> User:
    db: EventsDb = state(request).db
    user = await db.authenticate(state(request).secret, request.headers.get("authorization"),
                                 request.cookies.get(SESSION_COOKIE))
    if user is None:
        raise errors.unauthorized(
            "sign in: send `Authorization: Bearer <token>` or the session cookie")
    return user


async def _caller_id(request: Request, raw_job_id: str | None) -> tuple[int, Credential | None]:
    """The user of a stream token (a host app's user: see stream_tokens), else the caller's;
    and the credential whose end ends the stream (none for a stream token: it expires).

    A token in the URL is judged alone, as a bearer token is: no cookie rescues a bad one.
    """
    token = request.query_params.get(stream_tokens.PARAM)
    if token is not None:
        return stream_tokens.user_for(state(request).secret, token, raw_job_id), None
    user = await _caller(request)
    return user.id, Credential(user.id, user.token_id, user.session_id)


def _last_event_id(request: Request) -> int | None:
    raw = request.headers.get("last-event-id", "").strip()
    return int(raw) if raw.isdigit() else None


# Errors ----------------------------------------------------------------------------------


def _answer(answer: errors.Answer) -> Response:
    return JSONResponse(answer.body(), answer.status, answer.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return _answer(errors.http_answer(exc.status_code, request.method, request.url.path,
                                      str(exc.detail), dict(exc.headers or {})))


async def _error(request: Request, exc: Exception) -> Response:
    answer = errors.answer_for(exc)
    if answer is None:
        log.exception("unhandled error on %s", request.url.path)
        answer = errors.INTERNAL_ERROR
    return _answer(answer)


# The app ---------------------------------------------------------------------------------


def default_origins(cfg: config_mod.Config) -> list[str]:
    """The API's origin, by its bind and by the names a browser uses for a local address."""
    host, _, port = cfg.api_bind.rpartition(":")
    origins = [f"http://{cfg.api_bind}"]
    if host in ("127.0.0.1", "localhost", "0.0.0.0", "::", "[::]", ""):
        origins += [f"http://localhost:{port}", f"http://127.0.0.1:{port}"]
    return list(dict.fromkeys(origins))


def create_app(url: str | None = None, listen_url: str | None = None) -> Starlette:
    """The events app; ``url`` defaults to DATABASE_URL (or the running embedded cluster), and
    its LISTEN connection's ``listen_url`` to BGJOBS_DIRECT_URL (else that same database)."""
    cfg = config_mod.load()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        db_url = url or database_url(cfg)
        pool = make_pool(db_url, max_size=cfg.pool_max, timeout=cfg.pool_timeout)
        await pool.open(wait=False)
        broadcaster = Broadcaster(listen_url or (url or direct_url(cfg)), EventsDb(pool))
        app.state.db, app.state.broadcaster = broadcaster.db, broadcaster
        app.state.fanout = Fanout(encoded, PING)
        task = asyncio.create_task(broadcaster.run(), name="bgjobs-events-broadcaster")
        task.add_done_callback(_broadcaster_exited)
        pings = asyncio.create_task(broadcaster.keepalive(PING_SECONDS),
                                    name="bgjobs-events-keepalive")
        try:
            yield
        finally:
            for t in (task, pings):
                t.cancel()
                with suppress(asyncio.CancelledError):
                    await t
            await pool.close()

    app = Starlette(
        routes=[
            Route("/events/jobs/{job_id}", job_events, methods=["GET"]),
            Route("/events/jobs", user_events, methods=["GET"]),
            Route("/events/workflows/{workflow_id}", workflow_events, methods=["GET"]),
            Route("/events/admin/jobs", all_events, methods=["GET"]),
            Route("/events/healthz", healthz, methods=["GET"]),
            Route("/events/stats", stats, methods=["GET"]),
        ],
        middleware=[
            Middleware(CORSMiddleware, allow_origins=list(cfg.cors_origins)
                       or default_origins(cfg), allow_credentials=True, allow_methods=["GET"],
                       allow_headers=["Authorization", "Last-Event-ID", "Cache-Control"],
                       max_age=600),
        ],
        # bgjobs's own errors are answers (ExceptionMiddleware); `Exception` goes to
        # ServerErrorMiddleware, which answers and then re-raises for the server's log.
        exception_handlers={HTTPException: _http_error, ApiError: _error, BgjobsError: _error,
                            Exception: _error},
        lifespan=lifespan,
    )
    app.state.secret = cfg.secret_key()
    app.state.metrics_token = cfg.metrics_token
    app.state.max_streams = cfg.events_connections
    return app


def _broadcaster_exited(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the LISTEN broadcaster stopped: %r; live updates are off until restart",
                  task.exception())


def drain_on_sigterm(worker: Any) -> None:
    """gunicorn ``post_worker_init`` hook: end the SSE streams when the worker is told to stop.

    The asgi worker waits up to graceful_timeout for open connections, and SSE streams never
    end by themselves. Closing the subscriptions ends each stream properly (its last chunk
    sent), and browsers reconnect to a live worker.
    """

    def on_sigterm() -> None:
        broadcaster = getattr(worker.asgi.state, "broadcaster", None)
        if broadcaster is not None:
            broadcaster.close_all()
        worker.handle_exit_signal()

    worker.loop.add_signal_handler(signal.SIGTERM, on_sigterm)
