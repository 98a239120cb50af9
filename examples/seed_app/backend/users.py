"""Sign-in with a session cookie. The migration to bgjobs left this file as it was."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from flask import Blueprint, jsonify, redirect, render_template, request, session, url_for

from backend import database

bp = Blueprint("users", __name__, template_folder="templates")


def current_user_id() -> int | None:
    return session.get("user_id")


def login_required(view: Callable[..., Any]) -> Callable[..., Any]:
    """Pages redirect to the sign-in page; API routes answer 401."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if current_user_id() is None:
            if request.path.startswith("/api/"):
                return jsonify({"error": "sign in first"}), 401
            return redirect(url_for("users.login"))
        return view(*args, **kwargs)

    return wrapper


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    error = None
    if request.method == "POST":
        user_id = database.check_login(request.form.get("email", ""),
                                       request.form.get("password", ""))
        if user_id is not None:
            session.clear()
            session["user_id"] = user_id
            session["email"] = request.form["email"]
            return redirect(url_for("index"))
        error = "Wrong email or password."
    return render_template("login.html", error=error), 401 if error else 200


@bp.post("/logout")
def logout() -> Any:
    session.clear()
    return redirect(url_for("users.login"))
