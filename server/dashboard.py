"""The browser dashboard, served by the API at ``/`` (placeholder until the events issue)."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("dashboard", __name__)


@bp.get("/")
def index() -> tuple[str, int, dict[str, str]]:
    return "<!doctype html><title>bgjobs</title><p>bgjobs dashboard</p>", 200, {
        "Content-Type": "text/html; charset=utf-8"}
