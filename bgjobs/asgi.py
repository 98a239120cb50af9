"""Embed bgjobs in an ASGI app (Starlette, FastAPI): the job routes for the app's own signed-in
users, and live progress from bgjobs's event streams mounted in the same app (same origin, same
sign-in). What bgjobs.flask.BgJobs gives a Flask app; see docs/asgi.md.

    from bgjobs.asgi import BgJobs

    jobs = BgJobs(current_user_id=lambda request: request.session.get("user_id"))
    app = Starlette(routes=[*jobs.routes, ...], lifespan=jobs.lifespan)

    POST/GET /jobs, GET /jobs/{id}, POST /jobs/{id}/cancel, GET /jobs/workflows/{id}
    GET /jobs/events/{id} (one job's progress to its end), GET /jobs/events (all the user's)

``current_user_id`` takes the request and returns the signed-in user's id (an int, a row of the
app's users table) or None; it may be a coroutine function (a FastAPI-style dependency that
reads the app's session store). The database is bgjobs.aio's: one pool per event loop.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import types
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

import bgjobs.aio
from bgjobs.core import config as config_mod
from bgjobs.core.jobs import parse_job_id
from bgjobs.server import api_input, csrf, errors, events
from bgjobs.server.broadcast import Broadcaster
from bgjobs.server.errors import ApiError
from bgjobs.server.events_db import EventsDb
from bgjobs.server.fanout import Fanout
from bgjobs.tasks import registry

log = logging.getLogger(__name__)

UserId = Callable[[Request], "int | None | Awaitable[int | None]"]


class BgJobs:
    """bgjobs in an ASGI app, for the users the app signs in itself (no bgjobs users, no tokens).

    Add ``routes`` to the app's routes and ``lifespan`` to its lifespan (or ``await close()``
    at shutdown): the event streams' LISTEN connection starts with the first stream otherwise.
    """

    def __init__(self, *, current_user_id: UserId, url_prefix: str = "/jobs",
                 events_prefix: str | None = None) -> None:
        if not callable(current_user_id):
            raise TypeError("BgJobs needs current_user_id=: a callable that takes the request "
                            "and returns the signed-in user's id, or None "
                            f"(got {current_user_id!r})")
        for name, value in (("url_prefix", url_prefix), ("events_prefix", events_prefix)):
            if value is not None and (not value.startswith("/") or value.endswith("/")):
                raise ValueError(f"{name} is a path of its own, starting with / and not ending "
                                 f"with one (e.g. /jobs): got {value!r}")
        self.current_user_id = current_user_id
        self.url_prefix = url_prefix
        self.events_prefix = events_prefix or f"{url_prefix}/events"
        self.config = config_mod.load()
        registry.load_tasks(self.config.task_modules)  # import failures show at start
        self._events: types.SimpleNamespace | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._starting = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def routes(self) -> list[BaseRoute]:
        """The job routes and the event streams, to add to the app's routes."""
        p, e = self.url_prefix, self.events_prefix
        return [
            # The streams first: /jobs/events would otherwise be the job called "events".
            Route(f"{e}/{{job_id}}", self._stream(events.job_events), methods=["GET"]),
            Route(e, self._stream(events.user_events), methods=["GET"]),
            Route(p, self._view(self._create), methods=["POST"]),
            Route(p, self._view(self._list), methods=["GET"]),
            Route(f"{p}/workflows/{{raw_id}}", self._view(self._workflow), methods=["GET"]),
            Route(f"{p}/{{raw_id}}", self._view(self._get), methods=["GET"]),
            Route(f"{p}/{{raw_id}}/cancel", self._view(self._cancel), methods=["POST"]),
        ]

    async def user_id(self, request: Request) -> int:
        """The signed-in user's id; a 401 ApiError when nobody is signed in."""
        user_id = self.current_user_id(request)
        if inspect.isawaitable(user_id):
            user_id = await user_id
        if user_id is None:
            raise ApiError(401, "unauthorized", "sign in first")
        if not isinstance(user_id, int) or isinstance(user_id, bool):
            raise TypeError(f"current_user_id returned {user_id!r}; return the signed-in "
                            "user's id as an int (a row of the app's users table), or None")
        return user_id

    @asynccontextmanager
    async def lifespan(self, app: Any = None) -> AsyncIterator[None]:
        """The app's lifespan (or part of it): streams ready at start, all closed at the end."""
        await self._started()
        try:
            yield
        finally:
            await self.close()

    async def close(self) -> None:
        """End the streams and their LISTEN connection (a new one starts with the next)."""
        if self._events is not None:
            self._events.broadcaster.close_all()
        for task in self._tasks:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
        self._tasks, self._events = [], None

    # Views ------------------------------------------------------------------------------

    async def _create(self, request: Request, user_id: int) -> Response:
        data = await _body(request, self.config.max_body_bytes)
        req = api_input.job_request(api_input.parse_json(
            data, request.headers.get("content-type", "").split(";")[0].strip() or None))
        key = api_input.idempotency_header(request.headers.get("idempotency-key"))
        job, created = await bgjobs.aio.submit(
            req.job_type, req.params, user_id=user_id, priority=req.priority,
            run_after=req.run_after, idempotency_key=key, after=req.after,
            run_if_dependency_fails=req.run_if_dependency_fails, workflow_id=req.workflow_id)
        if created:
            log.info("job %s created: type=%s user=%s", job.id, job.job_type, user_id)
        headers = {"Location": f"{self.url_prefix}/{job.id}"}
        if not created:
            headers["Idempotent-Replayed"] = "true"
        return JSONResponse(job.to_json(), 202, headers)

    async def _list(self, request: Request, user_id: int) -> Response:
        query = api_input.list_query(request.query_params)
        store = await bgjobs.aio.default_store()
        jobs = await store.list_jobs(user_id=user_id, status=query.status,
                                     job_type=query.job_type, limit=query.limit + 1,
                                     before=query.before)
        page, cursor = api_input.page_of(jobs, query.limit)
        return JSONResponse({"jobs": [j.to_json() for j in page], "next_cursor": cursor})

    async def _get(self, request: Request, user_id: int) -> Response:
        store = await bgjobs.aio.default_store()
        job = await store.get_job(parse_job_id(request.path_params["raw_id"]), user_id)
        return JSONResponse(job.to_json())

    async def _cancel(self, request: Request, user_id: int) -> Response:
        job = await bgjobs.aio.cancel(request.path_params["raw_id"], user_id=user_id)
        log.info("job %s cancelled by user %s", job.id, user_id)
        return JSONResponse(job.to_json())

    async def _workflow(self, request: Request, user_id: int) -> Response:
        store = await bgjobs.aio.default_store()
        workflow = await store.get_workflow(parse_job_id(request.path_params["raw_id"]),
                                            user_id)
        return JSONResponse(workflow.to_json())

    # Internals ------------------------------------------------------------------------------

    def _view(self, view: Callable[[Request, int], Awaitable[Response]]
              ) -> Callable[[Request], Awaitable[Response]]:
        """A route: the same-origin check, then the caller (401 first), then ``view``; bgjobs's
        errors answered as JSON here, whatever the app's own error handlers do."""

        async def endpoint(request: Request) -> Response:
            try:
                _check_same_origin(request)
                response = await view(request, await self.user_id(request))
            except Exception as exc:  # noqa: BLE001 - answered by the one error vocabulary
                return _error(request, exc)
            response.headers.setdefault("Cache-Control", "no-store")
            return response

        return endpoint

    def _stream(self, view: Callable[[Request], Awaitable[Response]]
                ) -> Callable[[Request], Awaitable[Response]]:
        """A route to one of server/events.py's stream views, given this app's streams' state
        in the request's scope (where ``events.state`` finds it)."""

        async def endpoint(request: Request) -> Response:
            try:
                request.scope[events.STATE_SCOPE_KEY] = await self._started()
                return await view(request)
            except Exception as exc:  # noqa: BLE001 - answered by the one error vocabulary
                return _error(request, exc)

        return endpoint

    async def _started(self) -> types.SimpleNamespace:
        """The streams' state, their LISTEN connection started on first use (on this event
        loop: an app served again on another loop, as tests do, starts anew)."""
        loop = asyncio.get_running_loop()
        if self._events is not None and self._loop is loop:
            return self._events
        if self._loop is not loop:
            self._events, self._tasks, self._loop = None, [], loop
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._events is None:
                store = await bgjobs.aio.default_store()
                listen_url = self.config.direct_url or store.url
                broadcaster = Broadcaster(listen_url, EventsDb(store.pool))
                self._tasks = [
                    asyncio.create_task(broadcaster.run(), name="bgjobs-asgi-broadcaster"),
                    asyncio.create_task(broadcaster.keepalive(events.PING_SECONDS),
                                        name="bgjobs-asgi-keepalive")]
                self._events = types.SimpleNamespace(
                    broadcaster=broadcaster, db=broadcaster.db,
                    fanout=Fanout(events.encoded, events.PING),
                    max_streams=self.config.events_connections, identify=self.user_id)
        return self._events


def _check_same_origin(request: Request) -> None:
    """A change request with the app's cookie must come from the app's own pages
    (server/csrf.py): a 403 otherwise."""
    reason = csrf.refusal(request.method, has_cookie=bool(request.cookies),
                          authorization=request.headers.get("authorization"),
                          origin=request.headers.get("origin"),
                          referer=request.headers.get("referer"),
                          host=request.headers.get("host", ""),
                          schemes=frozenset({request.url.scheme, "https"}))
    if reason:
        raise ApiError(403, "forbidden", reason)


async def _body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) past ``limit`` bytes without reading the rest."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "payload_too_large",
                       f"request body too large (the limit is {limit} bytes)")
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise ApiError(413, "payload_too_large",
                           f"request body too large (the limit is {limit} bytes)")
    return bytes(data)


def _error(request: Request, exc: Exception) -> Response:
    found = errors.answer_for(exc)
    if found is None:
        log.exception("unhandled error on %s", request.url.path)
        found = errors.INTERNAL_ERROR
    return JSONResponse(found.body(), found.status, found.headers)
