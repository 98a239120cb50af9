"""The job endpoints and their JSON errors, for any Flask app: one implementation, two mounts.

The stand-alone API (bgjobs.server.api) mounts them at ``/api/jobs`` for its token and session
users; the Flask extension (bgjobs.flask) mounts them under a host app's prefix for the host's
own signed-in users. Both read requests with api_input, enqueue through the one enqueue path and
answer errors with the one vocabulary of bgjobs.server.errors.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Flask, Response, jsonify, request, url_for
from werkzeug.exceptions import HTTPException

from bgjobs.core.jobs import Job, parse_job_id
from bgjobs.core.store import Store
from bgjobs.server import api_input, errors
from bgjobs.tasks import enqueue

log = logging.getLogger(__name__)

#: The endpoints, by view name; each is ``JobViews.<name>``.
ROUTES = (
    ("", "create_job", ("POST",)),
    ("", "list_jobs", ("GET",)),
    ("/<raw_id>", "get_job", ("GET",)),
    ("/<raw_id>/cancel", "cancel_job", ("POST",)),
    ("/workflows/<raw_id>", "get_workflow", ("GET",)),
)


class JobViews:
    """The job endpoints over a store, for the caller that ``user_id()`` names (or refuses)."""

    def __init__(self, store: Callable[[], Store], user_id: Callable[[], int]) -> None:
        self.store = store
        self.user_id = user_id

    def add_routes(self, target: Flask | Blueprint, prefix: str = "",
                   wrap: Callable[[Any], Any] = lambda view: view) -> None:
        """Mount the endpoints at ``prefix`` (``wrap`` decorates each view, e.g. a login check)."""
        for rule, name, methods in ROUTES:
            target.add_url_rule(prefix + rule, name, wrap(getattr(self, name)),
                                methods=list(methods))

    # Views -----------------------------------------------------------------------------------

    def create_job(self) -> tuple[Response, int]:
        req = api_input.job_request(api_input.json_body(request))
        job, created = self.create(req.job_type, req.params, req.priority, req.run_after,
                                   req.after, req.run_if_dependency_fails, req.workflow_id)
        return self.accepted(job.to_json(), job, created)

    def list_jobs(self) -> Response:
        query = api_input.list_query(request.args)
        jobs = self.store().list_jobs(user_id=self.user_id(), status=query.status,
                                      job_type=query.job_type, limit=query.limit + 1,
                                      before=query.before)
        page, cursor = api_input.page_of(jobs, query.limit)
        return jsonify({"jobs": [j.to_json() for j in page], "next_cursor": cursor})

    def get_job(self, raw_id: str) -> Response:
        return jsonify(self.store().get_job(parse_job_id(raw_id), self.user_id()).to_json())

    def cancel_job(self, raw_id: str) -> Response:
        user_id = self.user_id()
        job = self.store().cancel(parse_job_id(raw_id), user_id)
        log.info("job %s cancelled by user %s", job.id, user_id)
        return jsonify(job.to_json())

    def get_workflow(self, raw_id: str) -> Response:
        """A workflow's summary and its jobs, oldest first (docs/workflows.md)."""
        workflow = self.store().get_workflow(parse_job_id(raw_id), self.user_id())
        return jsonify(workflow.to_json())

    # For other views that enqueue (the API's seed routes) -------------------------------------

    def create(self, job_type: str, params: Any, priority: int = 0, run_after: Any = None,
               after: Any = None, run_if_dependency_fails: bool = False,
               workflow_id: Any = None) -> tuple[Job, bool]:
        """Enqueue for the caller, honouring the request's Idempotency-Key."""
        user_id = self.user_id()
        key = api_input.idempotency_key(request)
        job, created = enqueue.submit(job_type, params, user_id=user_id, priority=priority,
                                      run_after=run_after, idempotency_key=key, after=after,
                                      run_if_dependency_fails=run_if_dependency_fails,
                                      workflow_id=workflow_id, store=self.store())
        if created:
            log.info("job %s created: type=%s user=%s", job.id, job.job_type, user_id)
        return job, created

    @staticmethod
    def accepted(body: dict[str, Any], job: Job, created: bool) -> tuple[Response, int]:
        """202 with the job and where to read it; a replayed Idempotency-Key says so."""
        response = jsonify(body)
        # ".get_job": this blueprint's endpoint, or the app's when mounted on the app itself.
        response.headers["Location"] = url_for(".get_job", raw_id=str(job.id))
        if not created:
            response.headers["Idempotent-Replayed"] = "true"
        return response, 202


# Errors ------------------------------------------------------------------------------------


def register_error_handlers(target: Flask | Blueprint) -> None:
    """Answer every error as JSON (bgjobs.server.errors): app-wide, or a blueprint's views only."""

    @target.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        status = exc.code or 500
        headers = {}
        if status == 405 and exc.get_response().headers.get("Allow"):
            headers["Allow"] = exc.get_response().headers["Allow"]
        description = exc.description or exc.name
        if status == 413:
            description = (f"request body too large (the limit is {request.max_content_length} "
                           "bytes)")
        return answer(errors.http_answer(status, request.method, request.path, description,
                                         headers))

    @target.errorhandler(Exception)
    def _error(exc: Exception) -> Response:
        found = errors.answer_for(exc)
        if found is None:
            log.exception("unhandled error: %s", exc)
            found = errors.INTERNAL_ERROR
        return answer(found)


def answer(found: errors.Answer) -> Response:
    """A JSON response for an error answer."""
    response = jsonify(found.body())
    response.status_code = found.status
    response.headers.update(found.headers)
    return response
