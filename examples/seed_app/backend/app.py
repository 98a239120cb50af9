"""The seed's app, with its jobs in Postgres (bgjobs) instead of per-process dicts.

What changed from before/app.py (docs/migrating.md walks through it):
- ``validation_jobs``, ``optimization_jobs``, ``rescoring_jobs`` and ``active_screenings`` are
  gone, with the threads that ran the jobs and ``screening_lock``: a start route enqueues a job
  (in the same transaction as the app's own activity row), ``bgjobs worker`` runs it, and every
  gunicorn worker reads its progress from the one table.
- The routes and their JSON stayed: ``POST /api/<feature>/run``,
  ``GET /api/<feature>/progress/<job_id>``, ``POST /api/<feature>/cancel/<job_id>``.
- The page follows progress live through bgjobs's events service (``stream_url``).
- The routes that change something take the extension's cross-site check
  (``jobs.same_origin``: a request with the session cookie from another origin's page is a
  403) and the start route reads only JSON (a 415 otherwise, which no HTML form can send);
  the session cookie is ``SameSite=Lax``.
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, Response, jsonify, render_template, request, session
from werkzeug.exceptions import HTTPException

import backend.jobs  # noqa: F401 - registers the app's own job type, screening
import bgjobs
from backend import database, users
from bgjobs.flask import BgJobs

FEATURES = ("validation", "optimization", "rescoring", "screening")
#: The pipeline's steps, each after the one before (a bgjobs workflow), sized for a demo.
PIPELINE = (
    ("validation", {"tickers": 20, "years": 2, "bootstrap": 10}),
    ("optimization", {"tickers": 20, "years": 2, "population": 8, "generations": 6}),
    ("rescoring", {"tickers": 20, "years": 2, "simulations": 200}),
)

jobs = BgJobs(current_user_id=users.current_user_id, url_prefix="/jobs")


def create_app() -> Flask:
    app = Flask(__name__)
    secret = os.environ.get("SECRET_KEY")
    if not secret:  # every gunicorn worker must sign sessions with the same key
        raise RuntimeError("set SECRET_KEY (run.py does it for you)")
    app.config["SECRET_KEY"] = secret
    # Other sites' pages cannot make the browser send the cookie with their POSTs; other ports
    # of this host are the same site, which jobs.same_origin refuses.
    app.config["SESSION_COOKIE_SAMESITE"] = "Lax"
    app.register_blueprint(users.bp)
    jobs.init_app(app)

    @app.after_request
    def served_by(response: Response) -> Response:
        response.headers["X-Served-By"] = str(os.getpid())
        return response

    @app.errorhandler(HTTPException)
    def api_errors(exc: HTTPException) -> Any:
        # The front end reads JSON from /api/; pages keep Flask's own error pages.
        if request.path.startswith("/api/"):
            return jsonify({"error": exc.description}), exc.code
        return exc

    @app.get("/")
    @users.login_required
    def index() -> str:
        return render_template("index.html", features=FEATURES, email=session.get("email"),
                               stream_url=jobs.stream_url())

    @app.post("/api/<any(validation, optimization, rescoring, screening):feature>/run")
    @users.login_required
    @jobs.same_origin
    def run(feature: str) -> Any:
        if not request.is_json:  # an HTML form (another site's page) cannot send JSON
            return jsonify({"error": "send the job's params as application/json (got "
                                     f"{request.mimetype or 'none'})"}), 415
        params = request.get_json(silent=True) if request.data else {}
        if not isinstance(params, dict):
            return jsonify({"error": "send the job's params as a JSON object"}), 400
        user_id = jobs.user_id()
        try:
            with database.connection() as conn:  # the job exists only if this commits
                job = bgjobs.enqueue(feature, params, user_id=user_id, conn=conn)
                database.log_activity(conn, user_id, f"start {feature}", job.id)
        except bgjobs.Conflict as exc:  # an exclusive type: one active job per user
            return jsonify({"error": str(exc), "job_id": str(exc.job_id)}), 409
        except (bgjobs.InvalidParams, bgjobs.InvalidRequest) as exc:
            return jsonify({"error": str(exc)}), 422
        return jsonify({"job_id": str(job.id), "status": job.status,
                        "stream_url": jobs.stream_url(job.id)}), 202

    @app.post("/api/pipeline/run")
    @users.login_required
    @jobs.same_origin
    def run_pipeline() -> Any:
        """Validate, then optimise, then rescore: one workflow, enqueued in one transaction."""
        if not request.is_json:
            return jsonify({"error": "send application/json"}), 415
        user_id = jobs.user_id()
        try:
            with database.connection() as conn, \
                    bgjobs.workflow(user_id=user_id, conn=conn) as wf:
                step = None
                for job_type, params in PIPELINE:
                    step = wf.enqueue(job_type, params, after=[step] if step else None)
                database.log_activity(conn, user_id, "start pipeline", wf.jobs[0].id)
        except bgjobs.Conflict as exc:  # each step is an exclusive type
            return jsonify({"error": str(exc), "job_id": str(exc.job_id)}), 409
        return jsonify({"workflow_id": str(wf.id),
                        "jobs": [{"id": str(j.id), "type": j.job_type} for j in wf.jobs]}), 202

    @app.get("/api/pipeline/<workflow_id>")
    @users.login_required
    def pipeline(workflow_id: str) -> Any:
        workflow = bgjobs.get_workflow(workflow_id, user_id=jobs.user_id())
        if workflow is None:
            return jsonify({"error": "pipeline not found"}), 404
        return jsonify(workflow.to_json())

    @app.get("/api/<feature>/progress/<job_id>")
    @users.login_required
    def progress(feature: str, job_id: str) -> Any:
        job = bgjobs.get_job(job_id, user_id=jobs.user_id())  # one SELECT, whichever worker
        if job is None or job.job_type != feature:
            return jsonify({"error": "job not found"}), 404
        return jsonify(_progress_json(job))

    @app.post("/api/<feature>/cancel/<job_id>")
    @users.login_required
    @jobs.same_origin
    def cancel(feature: str, job_id: str) -> Any:
        user_id = jobs.user_id()
        job = bgjobs.get_job(job_id, user_id=user_id)
        if job is None or job.job_type != feature:
            return jsonify({"error": "job not found"}), 404
        try:
            job = bgjobs.cancel(job.id, user_id=user_id)  # its worker stops the handler
        except bgjobs.Conflict:
            return jsonify({"error": "the job has already finished", "job_id": job_id}), 409
        with database.connection() as conn:
            database.log_activity(conn, user_id, f"cancel {feature}", job.id)
        return jsonify(_progress_json(job))

    return app


def _progress_json(job: bgjobs.Job) -> dict[str, Any]:
    """What the seed's progress route answered, read from the job's row."""
    return {"job_id": str(job.id), "status": job.status, "progress": job.progress,
            "result": job.result, "version": job.version,
            "updated_at": job.updated_at.isoformat() if job.updated_at else None}
