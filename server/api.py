"""The HTTP API: a stateless Flask app, safe to run as many gunicorn workers with threads.

Every request reads and writes Postgres through the store; nothing about jobs is kept in
process memory, so any request can land on any worker. Errors are answered through
bgjobs.server.errors, the vocabulary the events service shares.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Flask, Response, g, jsonify, request

from bgjobs.core import channels
from bgjobs.core import config as config_mod
from bgjobs.core.db import database_url, make_pool
from bgjobs.core.jobs import User
from bgjobs.core.pool_holder import PoolHolder
from bgjobs.core.store import Store
from bgjobs.server import admin, api_input, auth, csrf, dashboard, errors, metrics, openapi
from bgjobs.server.errors import ApiError
from bgjobs.server.job_views import JobViews, register_error_handlers
from bgjobs.tasks import registry

log = logging.getLogger(__name__)

STORE_KEY = "bgjobs_store"
#: The policy of every answer but the dashboard's page: JSON loads nothing and is never framed.
NO_CONTENT_POLICY = "default-src 'none'; frame-ancestors 'none'"
F = TypeVar("F", bound=Callable[..., Any])


def create_app(store: Store | None = None, config: config_mod.Config | None = None) -> Flask:
    """The API app; without ``store`` it makes its own lazy pool (call it after fork)."""
    config = config or config_mod.load()
    owned = None
    if store is None:
        owned = PoolHolder(lambda: make_pool(database_url(config), min_size=1,
                                             max_size=config.pool_max, name=channels.API,
                                             timeout=config.pool_timeout))
        store = owned.store()
    # Import failures in host task modules show at start, not per request.
    registry.load_tasks(config.task_modules)
    registry.record_types(store)

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions[STORE_KEY] = store
    app.extensions["bgjobs_owned_pool"] = owned
    app.extensions[dashboard.CONFIG_KEY] = config
    secret = config.secret_key()
    cookie_secure = config.cookie_secure
    register_error_handlers(app)
    app.register_blueprint(dashboard.bp)
    admin.register(app, store, lambda: _authenticate(store, secret))

    def login_required(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            g.user = _authenticate(store, secret)
            return view(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    @app.before_request
    def _same_origin() -> None:
        csrf.check(request, has_cookie=auth.SESSION_COOKIE in request.cookies,
                   schemes=frozenset({request.scheme, *(("https",) if cookie_secure else ())}))

    @app.after_request
    def _headers(response: Response) -> Response:
        # Which worker process answered: lets tests (and operators) see the load spread.
        response.headers["X-Served-By"] = str(os.getpid())
        if request.path.startswith("/api/"):
            response.headers.setdefault("Cache-Control", "no-store")
        # Nothing of the API's is to be framed or sniffed; the dashboard sets its own policy.
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers.setdefault("Content-Security-Policy", NO_CONTENT_POLICY)
        return response

    # Health, metrics, description ---------------------------------------------------------

    @app.get("/healthz")
    def healthz() -> Response:
        store.ping()
        return jsonify({"status": "ok", "database": "ok"})

    @app.get("/metrics")
    def metrics_page() -> Response:
        auth.check_metrics_token(config.metrics_token, request.headers.get("Authorization"))
        return Response(metrics.render(store), content_type=metrics.CONTENT_TYPE)

    @app.get("/api/openapi.json")
    def openapi_spec() -> Response:
        return jsonify(openapi.spec())

    # Identity -----------------------------------------------------------------------------

    @app.post("/api/session")
    def sign_in() -> Response:
        body = api_input.json_body(request)
        token = body.get("token")
        if not isinstance(token, str) or not token:
            raise ApiError(422, "invalid_request", "send {\"token\": \"<your API token>\"}")
        user = store.user_for_token(token)
        if user is None:
            raise errors.unauthorized("invalid or revoked token")
        session_id = store.start_session(user, auth.SESSION_MAX_AGE)
        response = jsonify({"user": _user_json(user)})
        response.set_cookie(auth.SESSION_COOKIE, auth.make_session(secret, session_id),
                            max_age=auth.SESSION_MAX_AGE, path="/", httponly=True,
                            samesite="Lax", secure=cookie_secure)
        log.info("user %s signed in (token %s)", user.id, user.token_id)
        return response

    @app.delete("/api/session")
    def sign_out() -> Response:
        # Ended in the database: a copy of the cookie is refused too, and its streams end.
        cookie = request.cookies.get(auth.SESSION_COOKIE)
        session_id = auth.read_session(secret, cookie) if cookie else None
        if session_id is not None and store.end_session(session_id):
            log.info("session %s signed out", session_id)
        response = Response(status=204)
        response.delete_cookie(auth.SESSION_COOKIE, path="/", httponly=True, samesite="Lax",
                               secure=cookie_secure)
        return response

    @app.get("/api/me")
    @login_required
    def me() -> Response:
        return jsonify({"user": _user_json(g.user)})

    @app.get("/api/types")
    @login_required
    def types() -> Response:
        tasks = registry.load_tasks()
        return jsonify({"types": [tasks[name].describe() for name in sorted(tasks)]})

    # Jobs (the same views the Flask extension mounts in a host app) -------------------------

    jobs = JobViews(lambda: store, lambda: g.user.id)
    jobs.add_routes(app, "/api/jobs", login_required)

    return app


def _authenticate(store: Store, secret: str) -> User:
    header = request.headers.get("Authorization")
    cookie = request.cookies.get(auth.SESSION_COOKIE)
    if not header and not cookie:
        raise errors.unauthorized(
            "sign in: send Authorization: Bearer <token>, or POST /api/session for a cookie")
    user = auth.authenticate(store, secret, header, cookie)
    if user is None:
        raise errors.unauthorized(
            "invalid or revoked token" if header else "session expired or revoked; sign in again")
    return user


def _user_json(user: User) -> dict[str, Any]:
    return {"id": user.id, "name": user.name, "is_admin": user.is_admin}


def close(app: Flask) -> None:
    """Close the pool the app made for itself (gunicorn worker exit)."""
    owned = app.extensions.get("bgjobs_owned_pool")
    if owned is not None:
        owned.close()
