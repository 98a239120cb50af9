"""Embed bgjobs in an existing Flask app: the job routes for the app's own signed-in users, and
live progress through the events service with signed stream URLs. See docs/flask.md.

    from bgjobs.flask import BgJobs

    jobs = BgJobs(current_user_id=lambda: session.get("user_id"))

    def create_app():
        app = Flask(__name__)
        jobs.init_app(app)      # POST/GET /jobs, GET /jobs/<id>, POST /jobs/<id>/cancel
        return app

    jobs.stream_url(job.id)     # in a view: the events stream of that job, for this user
    @jobs.same_origin           # on the app's views that change something: 403 cross-site

Nothing here is global: each app keeps its settings and its connection pool in
``app.extensions["bgjobs"]``, so one extension object serves any number of apps.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urljoin
from uuid import UUID

from flask import Blueprint, Flask, Response, current_app, g, jsonify, request
from werkzeug.exceptions import Forbidden, HTTPException, Unauthorized
from werkzeug.routing import RoutingException

from bgjobs.core import channels
from bgjobs.core import config as config_mod
from bgjobs.core.db import database_url, make_pool
from bgjobs.core.errors import BgjobsError
from bgjobs.core.jobs import parse_job_id
from bgjobs.core.pool_holder import PoolHolder
from bgjobs.core.store import Store
from bgjobs.server import csrf, dashboard, errors, stream_tokens
from bgjobs.server.errors import ApiError
from bgjobs.server.job_views import ROUTES, JobViews, answer, register_error_handlers
from bgjobs.tasks import registry

log = logging.getLogger(__name__)

EXTENSION_KEY = "bgjobs"
#: app.config keys the extension reads before the environment (the rest: docs/flask.md).
APP_CONFIG = {
    "BGJOBS_DATABASE_URL": "database_url",
    "BGJOBS_SECRET_KEY": "secret_key_env",
    "BGJOBS_EVENTS_URL": "events_url",
    "BGJOBS_STREAM_TOKEN_SECONDS": "stream_token_seconds",
}
_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


class NotSignedIn(Unauthorized, BgjobsError):
    """Nobody is signed in: the extension's routes answer a JSON 401; the app's views, the app's
    own 401 (werkzeug's base first: Flask finds the app's HTTP error handlers for it)."""

    description = "sign in first"


class CrossSite(Forbidden, BgjobsError):
    """A change request with the app's cookie came from another origin's page: the extension's
    routes answer a JSON 403; the app's views (``BgJobs.same_origin``), the app's own 403."""


class BgJobs:
    """bgjobs in a Flask app, for the users the app signs in itself (no bgjobs users, no tokens).

    ``current_user_id`` is the app's callable that returns the signed-in user's id (an int, a
    row of the app's users table), or None when nobody is signed in.
    """

    def __init__(self, app: Flask | None = None, *, current_user_id: Callable[[], int | None],
                 url_prefix: str = "/jobs") -> None:
        if not callable(current_user_id):
            raise TypeError("BgJobs needs current_user_id=: a callable that returns the signed-in "
                            f"user's id, or None (got {current_user_id!r})")
        if not url_prefix.startswith("/") or url_prefix.endswith("/"):
            raise ValueError("url_prefix is a path of its own, starting with / and not ending "
                             f"with one (e.g. /jobs): got {url_prefix!r}")
        self.current_user_id = current_user_id
        self.url_prefix = url_prefix
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Register the job routes on ``app`` and keep its settings (app-factory style)."""
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError("bgjobs is already set up on this app (init_app called twice)")
        state = _AppState(settings(app))
        # Import failures in the app's task modules show at start, not per request.
        registry.load_tasks(state.config.task_modules)
        app.extensions[EXTENSION_KEY] = state
        app.register_blueprint(self._blueprint(state))

    # For the app's own views -------------------------------------------------------------

    def user_id(self) -> int:
        """The signed-in user's id; NotSignedIn (a 401) when nobody is signed in."""
        user_id = self.current_user_id()
        if user_id is None:
            raise NotSignedIn()
        if not isinstance(user_id, int) or isinstance(user_id, bool):
            raise TypeError(f"current_user_id returned {user_id!r}; return the signed-in "
                            "user's id as an int (a row of the app's users table), or None")
        return user_id

    def same_origin(self, view: Callable[..., Any]) -> Callable[..., Any]:
        """Decorate an app view that changes something with the extension's own check: a
        POST (PUT, PATCH, DELETE) that carries a cookie must come from this site's pages, by its
        Origin (else Referer) header; else CrossSite, a 403."""

        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                _check_same_origin()
            except ApiError as exc:
                raise CrossSite(str(exc)) from None
            return view(*args, **kwargs)

        return wrapper

    def stream_url(self, job_id: UUID | str | None = None) -> str:
        """The absolute URL of the events stream of ``job_id`` (None: every job of the signed-in
        user), with a signed token good for BGJOBS_STREAM_TOKEN_SECONDS."""
        return self._stream(job_id)[0]

    @staticmethod
    def close(app: Flask) -> None:
        """Close ``app``'s connection pool in this process (a gunicorn ``worker_exit``, tests)."""
        state = app.extensions.get(EXTENSION_KEY)
        if state is not None:
            state.close()

    # Internals ------------------------------------------------------------------------------

    def _stream(self, job_id: UUID | str | None) -> tuple[str, int]:
        cfg = _state().config
        parsed = parse_job_id(job_id) if job_id is not None else None
        token, expires = stream_tokens.issue(cfg.secret_key(), self.user_id(), parsed,
                                             cfg.stream_token_seconds)
        path = f"/events/jobs/{parsed}" if parsed else "/events/jobs"
        base = urljoin(request.host_url, dashboard.events_base(cfg) + "/")
        return f"{urljoin(base, path.lstrip('/'))}?{stream_tokens.PARAM}={token}", expires

    def _blueprint(self, state: _AppState) -> Blueprint:
        bp = Blueprint("bgjobs", __name__)
        prefix = self.url_prefix

        def signed_in(view: Callable[..., Any]) -> Callable[..., Any]:
            # Who is calling is settled before the request is read: no user, a 401 at once.
            @functools.wraps(view)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                g.bgjobs_user_id = self.user_id()
                return view(*args, **kwargs)

            return wrapper

        views = JobViews(state.store, lambda: g.bgjobs_user_id)
        views.add_routes(bp, prefix, signed_in)

        @bp.get(f"{prefix}/stream-url", endpoint="stream_url")
        @bp.get(f"{prefix}/<raw_id>/stream-url", endpoint="job_stream_url")
        @signed_in
        def renew(raw_id: str | None = None) -> Response:
            # A page whose stream token expired asks for a new URL here.
            if raw_id is not None:
                state.store().get_job(parse_job_id(raw_id), g.bgjobs_user_id)  # 404: not theirs
            url, expires = self._stream(raw_id)
            return jsonify({"url": url,
                            "expires_at": datetime.fromtimestamp(expires, UTC).isoformat()})

        def no_route(rest: str = "") -> Response:
            # The app's own 404/405 pages stay its own; under the prefix, errors are JSON.
            allowed = _allowed_methods()
            status = 405 if allowed else 404
            headers = {"Allow": ", ".join(allowed)} if allowed else {}
            return answer(errors.http_answer(status, request.method, request.path, None,
                                             headers))

        taken = {m for rule, _, methods in ROUTES if not rule for m in methods}
        for rule, methods in [(f"{prefix}/<path:rest>", _METHODS), (f"{prefix}/", _METHODS),
                              (prefix, [m for m in _METHODS if m not in taken])]:
            bp.add_url_rule(rule, "no_route", no_route, methods=methods)

        bp.before_request(_check_same_origin)

        @bp.before_request
        def limit_body() -> None:
            limit = state.config.max_body_bytes
            own = current_app.config.get("MAX_CONTENT_LENGTH")
            request.max_content_length = min(limit, own) if own else limit

        @bp.after_request
        def no_store(response: Response) -> Response:
            response.headers.setdefault("Cache-Control", "no-store")
            return response

        register_error_handlers(bp)
        return bp


def _check_same_origin() -> None:
    """A 403 ApiError for a change request with a cookie from another origin (server/csrf.py)."""
    # The app signs its users in with a cookie of its own, which a page on another port of the
    # same host can make the browser send: a change needs this site's Origin. https too: behind
    # a TLS proxy.
    csrf.check(request, has_cookie=bool(request.cookies),
               schemes=frozenset({request.scheme, "https"}))


def _allowed_methods() -> list[str]:
    """Methods of the extension's real routes that match this path (none: no such route)."""
    adapter = current_app.url_map.bind_to_environ(request.environ)
    allowed = []
    for method in dict.fromkeys(m for _, _, methods in ROUTES for m in methods):
        try:
            endpoint, _ = adapter.match(method=method)
        except (HTTPException, RoutingException):  # no such route for it, or a redirect
            continue
        if endpoint != "bgjobs.no_route":
            allowed.append(method)
    return allowed


class _AppState:
    """One app's settings and its store, made lazily per process (gunicorn forks after import)."""

    def __init__(self, config: config_mod.Config) -> None:
        self.config = config
        self.pool = PoolHolder(lambda: make_pool(database_url(config), min_size=1,
                                                 max_size=config.pool_max, name=channels.FLASK))

    def store(self) -> Store:
        return self.pool.store()

    def close(self) -> None:
        self.pool.close()


def _state() -> _AppState:
    state = current_app.extensions.get(EXTENSION_KEY)
    if state is None:
        raise RuntimeError("bgjobs is not set up on this app: call BgJobs.init_app(app) first")
    return state


def settings(app: Flask) -> config_mod.Config:
    """bgjobs's settings for ``app``: its ``BGJOBS_*`` app.config keys, else the environment."""
    overrides: dict[str, Any] = {}
    for key, field in APP_CONFIG.items():
        value = app.config.get(key)
        if value is None:
            continue
        if field == "stream_token_seconds":
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
            wanted = "a whole number of seconds, at least 1"
        else:
            ok, wanted = isinstance(value, str) and bool(value), "a non-empty string"
        if not ok:
            raise config_mod.ConfigError(f"app.config[{key!r}] must be {wanted}, got {value!r}")
        if field == "database_url":
            config_mod.check_database_url(f"app.config[{key!r}]", str(value))
        overrides[field] = value
    return dataclasses.replace(config_mod.load(), **overrides)
