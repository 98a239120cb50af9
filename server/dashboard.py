"""The browser dashboard, served by the API at ``/``: plain HTML, CSS and JavaScript.

The page signs in with an API token (the API's session cookie), lists the caller's jobs, starts
and cancels them, and follows them live through one EventSource on the events service. It never
polls. The events service's URL is rendered into the page (BGJOBS_EVENTS_URL, else this host on
BGJOBS_EVENTS_BIND's port).
"""

from __future__ import annotations

import hashlib
from functools import cache
from importlib.resources import files
from urllib.parse import urlsplit

from flask import Blueprint, Response, current_app, render_template_string, request, url_for

from bgjobs.core.config import Config

#: Where create_app keeps the API's Config for the page (read once at start).
CONFIG_KEY = "bgjobs_config"

bp = Blueprint("dashboard", __name__, static_folder="static",
               static_url_path="/dashboard/static")


@bp.get("/")
def index() -> Response:
    events_url = events_base(current_app.extensions[CONFIG_KEY])
    html = render_template_string(
        _template(),
        events_url=events_url,
        css=_asset("dashboard.css"),
        js=_asset("dashboard.js"),
        admin_js=_asset("admin.js"),  # loaded by the page only for admins
    )
    return Response(html, content_type="text/html; charset=utf-8",
                    headers={"Cache-Control": "no-cache",
                             "Content-Security-Policy": content_policy(events_url)})


def content_policy(events_url: str) -> str:
    """The page's CSP: its own script, style and API, the events service, nothing else."""
    parts = urlsplit(events_url)
    events = f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else ""
    return ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            f"connect-src 'self'{' ' + events if events else ''}; base-uri 'none'; "
            "form-action 'self'; frame-ancestors 'none'")


def events_base(cfg: Config) -> str:
    """The events service's base URL as the browser should use it ("" for this origin)."""
    if cfg.events_url:
        return cfg.events_url.rstrip("/")
    port = cfg.events_bind.rpartition(":")[2]
    # The host the browser used, not the bind address: the session cookie belongs to that
    # name, and 0.0.0.0 is no address a browser can reach.
    host = urlsplit(request.host_url).hostname or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"{request.scheme}://{host}:{port}"


def _static(name: str) -> bytes:
    """An asset as installed (package data of bgjobs.server)."""
    return files("bgjobs.server").joinpath("static", name).read_bytes()


@cache
def _template() -> str:
    return _static("index.html").decode("utf-8")


def _asset(name: str) -> str:
    """The asset's URL with a content hash, so a new version is never served from cache."""
    return url_for("dashboard.static", filename=name, v=_digest(name))


@cache
def _digest(name: str) -> str:
    return hashlib.sha256(_static(name)).hexdigest()[:12]
