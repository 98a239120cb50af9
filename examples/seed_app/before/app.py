"""The seed's app BEFORE the migration: job state in per-process dicts, jobs in threads.

Kept to compare against: ``make bench`` measures its progress checks during a heavy job beside
the migrated app's (bench/seed_app.py), and docs/migrating.md shows what replaced each part.
It only works as ONE single-threaded gunicorn worker (before/gunicorn.conf.py): a request that
lands on another worker finds no job (404), and the job's thread shares the process (and its
GIL) with every request. Do not copy it.
"""

from __future__ import annotations

import os
import threading
import uuid
from typing import Any

import backend.jobs  # noqa: F401 - the screening computation (the same code as after)
from backend import users
from flask import Flask, jsonify, request

from bgjobs.tasks import registry  # the seed's computations, as bgjobs runs them

validation_jobs: dict[str, dict[str, Any]] = {}  # Tracks S&P 500 backtests
optimization_jobs: dict[str, dict[str, Any]] = {}  # Tracks genetic optimization
rescoring_jobs: dict[str, dict[str, Any]] = {}  # Tracks mass-rescoring of stocks
active_screenings: dict[int, str] = {}  # user id -> the screening job running for them
screening_lock = threading.Lock()
JOBS = {"validation": validation_jobs, "optimization": optimization_jobs,
        "rescoring": rescoring_jobs, "screening": {}}


class Cancelled(Exception):
    pass


class Progress:
    """What the computations call while they run: progress goes into the job's dict."""

    def __init__(self, job_id: str, job: dict[str, Any], params: dict[str, Any]) -> None:
        self.job_id, self.job, self.params, self.attempt = job_id, job, params, 1

    def progress(self, current: int, total: int | None = None, stage: str | None = None,
                 **extra: Any) -> None:
        self.check_cancelled()
        self.job["progress"] = {"current": current, "total": total, "stage": stage, **extra}

    def cancelled(self) -> bool:
        return bool(self.job.get("cancel"))

    def check_cancelled(self) -> None:
        if self.cancelled():
            raise Cancelled()


def _run(feature: str, job_id: str, params: dict[str, Any], user_id: int) -> None:
    job = JOBS[feature][job_id]
    job["status"] = "running"
    try:
        job["result"] = registry.get(feature).handler(Progress(job_id, job, params))
        job["status"] = "complete"
    except Cancelled:
        job["status"] = "cancelled"
    except Exception as exc:  # noqa: BLE001 - the seed stored the error for the progress route
        job["status"], job["result"] = "error", {"error": type(exc).__name__,
                                                 "message": str(exc)}
    finally:
        if feature == "screening":
            with screening_lock:
                active_screenings.pop(user_id, None)


def create_app() -> Flask:
    app = Flask(__name__)
    app.config["SECRET_KEY"] = os.environ["SECRET_KEY"]
    app.register_blueprint(users.bp)

    @app.after_request
    def served_by(response: Any) -> Any:
        response.headers["X-Served-By"] = str(os.getpid())
        return response

    @app.get("/")
    @users.login_required
    def index() -> str:
        return "Signed in. (The old page polled the progress routes; it is not kept here.)"

    @app.post("/api/<any(validation, optimization, rescoring, screening):feature>/run")
    @users.login_required
    def run(feature: str) -> Any:
        user_id = users.current_user_id()
        assert user_id is not None
        try:
            params = registry.get(feature).validate(request.get_json(silent=True) or {})
        except registry.InvalidParams as exc:
            return jsonify({"error": str(exc)}), 422
        job_id = str(uuid.uuid4())
        if feature == "screening":
            with screening_lock:
                if user_id in active_screenings:
                    return jsonify({"error": "a screening is already running",
                                    "job_id": active_screenings[user_id]}), 409
                active_screenings[user_id] = job_id
        JOBS[feature][job_id] = {"status": "pending", "progress": {}, "result": None,
                                 "user_id": user_id}
        threading.Thread(target=_run, args=(feature, job_id, params, user_id),
                         daemon=True).start()
        return jsonify({"job_id": job_id, "status": "pending"}), 202

    @app.get("/api/<feature>/progress/<job_id>")
    @users.login_required
    def progress(feature: str, job_id: str) -> Any:
        job = JOBS.get(feature, {}).get(job_id)
        if job is None or job["user_id"] != users.current_user_id():
            return jsonify({"error": "job not found"}), 404  # or: another worker's job
        return jsonify({"job_id": job_id, "status": job["status"],
                        "progress": job["progress"], "result": job["result"]})

    @app.post("/api/<feature>/cancel/<job_id>")
    @users.login_required
    def cancel(feature: str, job_id: str) -> Any:
        job = JOBS.get(feature, {}).get(job_id)
        if job is None or job["user_id"] != users.current_user_id():
            return jsonify({"error": "job not found"}), 404
        job["cancel"] = True  # the thread stops at its next progress report
        return jsonify({"job_id": job_id, "status": job["status"]})

    return app
