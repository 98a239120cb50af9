"""The OpenAPI 3.1 description of the API, served at ``GET /api/openapi.json``.

A test checks that every route of the app appears here, and a fuzzer (schemathesis, in the
tests) that every answer to generated requests, valid or not, is one described here: the
patterns below are the server's own checks.
"""

from __future__ import annotations

from typing import Any

from bgjobs.server.api_input import (
    CURSOR_PATTERN,
    LIMIT_DEFAULT,
    LIMIT_MAX,
    TYPE_QUERY_PATTERN,
)
from bgjobs.tasks.enqueue import IDEMPOTENCY_KEY_PATTERN, PRIORITY_MAX, PRIORITY_MIN

_STATUSES = ["pending", "running", "complete", "error", "cancelled"]
_TS = {"type": ["string", "null"], "format": "date-time"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _err(description: str) -> dict[str, Any]:
    return {"$ref": f"#/components/responses/{description}"}


def _op(summary: str, responses: dict[str, Any], *, auth: bool = True, unsafe: bool = False,
        **extra: Any) -> dict:
    """An operation; ``unsafe`` ones (POST, DELETE) can be refused as cross-site (403)."""
    op: dict[str, Any] = {"summary": summary, "responses": responses, **extra}
    if not auth:
        op["security"] = []
    else:
        responses.setdefault("401", _err("Unauthorized"))
    if unsafe:
        responses.setdefault("403", _err("Forbidden"))
    responses.setdefault("503", _err("Unavailable"))
    return op


_JOB_ID = {"name": "id", "in": "path", "required": True,
           "description": "The job's UUID; anything else answers 404.",
           "schema": {"type": "string", "format": "uuid"}}
_IDEMPOTENCY = {"name": "Idempotency-Key", "in": "header", "required": False,
                "description": "Retrying with the same key returns the same job (per user): "
                               "1 to 255 printable ASCII characters, spaces only inside.",
                "schema": {"type": "string", "pattern": IDEMPOTENCY_KEY_PATTERN}}


def spec() -> dict[str, Any]:
    job_202 = _json(_ref("Job"), "The job (new, or the earlier one on an Idempotency-Key replay, "
                                 "which carries the header Idempotent-Replayed: true).")
    return {
        "openapi": "3.1.0",
        "info": {"title": "bgjobs API", "version": "1",
                 "description": "Postgres-native background jobs. Errors are "
                                "{\"error\": {\"code\", \"message\"}}; see docs/api.md."},
        "security": [{"bearer": []}, {"session": []}],
        "paths": {
            "/healthz": {"get": _op("Database reachable?", {
                "200": _json({"type": "object"}, "Postgres answers.")}, auth=False)},
            "/metrics": {"get": _op("Prometheus metrics, read from Postgres", {
                "200": {"description": "Prometheus text format",
                        "content": {"text/plain": {"schema": {"type": "string"}}}},
                "401": _err("Unauthorized"),
                "403": _json(_ref("Error"), "BGJOBS_METRICS_TOKEN is unset: metrics are off")},
                auth=False, security=[{"metrics": []}])},
            "/api/openapi.json": {"get": _op("This document", {
                "200": _json({"type": "object"}, "OpenAPI 3.1")}, auth=False)},
            "/api/session": {
                "post": _op("Sign in with a token; sets the HttpOnly session cookie", {
                    "200": _json(_ref("Me"), "Signed in; Set-Cookie: bgjobs_session=..."),
                    "400": _err("BadRequest"), "401": _err("Unauthorized"),
                    "413": _err("BadRequest"), "415": _err("BadRequest"),
                    "422": _err("Invalid")}, auth=False, unsafe=True,
                    requestBody={"required": True, "content": {"application/json": {"schema": {
                        "type": "object", "required": ["token"],
                        "properties": {"token": {"type": "string"}}}}}}),
                "delete": _op("Sign out: ends the session on the server, clears the cookie", {
                    "204": {"description": "Signed out"}}, auth=False, unsafe=True),
            },
            "/api/me": {"get": _op("Who am I", {"200": _json(_ref("Me"), "The caller")})},
            "/api/types": {"get": _op("Registered job types and their params", {
                "200": _json({"type": "object", "properties": {"types": {
                    "type": "array", "items": {"type": "object"}}}}, "Job types")})},
            "/api/jobs": {
                "post": _op("Enqueue a job", {
                    "202": job_202, "400": _err("BadRequest"), "409": _err("Conflict"),
                    "413": _err("BadRequest"), "415": _err("BadRequest"),
                    "422": _err("Invalid")}, unsafe=True,
                    parameters=[_IDEMPOTENCY],
                    requestBody={"required": True, "content": {
                        "application/json": {"schema": _ref("NewJob")}}}),
                "get": _op("The caller's jobs, newest first", {
                    "200": _json(_ref("JobList"), "A page of jobs"),
                    "400": _err("BadRequest")},
                    parameters=[
                        {"name": "status", "in": "query",
                         "schema": {"type": "string", "enum": _STATUSES}},
                        {"name": "type", "in": "query", "schema": {
                            "type": "string", "pattern": TYPE_QUERY_PATTERN}},
                        {"name": "limit", "in": "query", "schema": {
                            "type": "integer", "minimum": 1, "maximum": LIMIT_MAX,
                            "default": LIMIT_DEFAULT}},
                        {"name": "cursor", "in": "query",
                         "schema": {"type": "string", "pattern": CURSOR_PATTERN},
                         "description": "next_cursor of the previous page, as is (any other "
                                        "value answers 400)"}]),
            },
            "/api/jobs/{id}": {"get": _op("One of the caller's jobs", {
                "200": _json(_ref("Job"), "The job"), "404": _err("NotFound")},
                parameters=[_JOB_ID])},
            "/api/jobs/workflows/{id}": {"get": _op("One of the caller's workflows", {
                "200": _json(_ref("Workflow"), "Its summary and jobs, oldest first"),
                "404": _err("NotFound")}, parameters=[{
                    "name": "id", "in": "path", "required": True,
                    "description": "The workflow's UUID; anything else answers 404.",
                    "schema": {"type": "string", "format": "uuid"}}])},
            "/api/jobs/{id}/cancel": {"post": _op("Cancel a pending or running job", {
                "200": _json(_ref("Job"), "The cancelled job"), "404": _err("NotFound"),
                "409": _err("Conflict")}, unsafe=True, parameters=[_JOB_ID])},
            **_admin_paths(),
        },
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "A token from `bgjobs user create NAME`."},
                "session": {"type": "apiKey", "in": "cookie", "name": "bgjobs_session",
                            "description": "Set by POST /api/session. A POST or DELETE with "
                                           "it must carry this site's Origin (or Referer), "
                                           "else 403."},
                "metrics": {"type": "http", "scheme": "bearer",
                            "description": "BGJOBS_METRICS_TOKEN (only /metrics)."},
            },
            "schemas": _schemas(),
            "responses": {
                name: _json(_ref("Error"), text) for name, text in [
                    ("BadRequest", "Unreadable request: malformed JSON, wrong content type, "
                                   "bad query parameter, body too large (413)"),
                    ("Unauthorized", "Missing, invalid or revoked credentials"),
                    ("NotFound", "No such job for this user (or not a UUID), or no such "
                                 "route"),
                    ("Conflict", "The job has finished, or an exclusive job is active "
                                 "(error.job_id names it)"),
                    ("Invalid", "Unknown type, bad params, priority or run_after"),
                    ("Unavailable", "The database is unreachable; retry"),
                    ("Forbidden", "Signed in, but not an admin (the operator view); or a "
                                  "POST/DELETE with the session cookie from another origin "
                                  "(no matching Origin or Referer)"),
                ]
            },
        },
    }


def _admin_paths() -> dict[str, Any]:
    """The operator view (admins only; everyone else gets 403)."""
    def op(summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return _op(summary, {**responses, "403": _err("Forbidden")}, tags=["admin"], **extra)

    name = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"},
            "description": "The schedule's name (bgjobs_schedules.name)."}
    when = {"type": "string", "format": "date-time"}
    return {
        "/api/admin/overview": {"get": op(
            "Counts by type and status, queue depth and oldest pending age, started/completed/"
            "failed per minute over the last hour, live workers, stuck jobs, schedules, limits",
            {"200": _json(_ref("Overview"), "The whole queue, read from Postgres now")})},
        "/api/admin/jobs": {"get": op(
            "Every user's jobs, newest first, filtered, a page at a time", {
                "200": _json({"type": "object", "properties": {
                    "jobs": {"type": "array", "items": {"allOf": [_ref("Job"), {
                        "type": "object", "properties": {
                            "user": {"type": ["string", "null"]},
                            "worker_id": {"type": ["string", "null"]}}}]}},
                    "next_cursor": {"type": ["string", "null"]}}}, "A page of jobs"),
                "400": _err("BadRequest")},
            parameters=[
                {"name": "status", "in": "query", "schema": {"type": "string",
                                                             "enum": _STATUSES}},
                {"name": "type", "in": "query", "schema": {"type": "string"}},
                {"name": "user", "in": "query", "schema": {"type": "string"},
                 "description": "A user name or id"},
                {"name": "since", "in": "query", "schema": when,
                 "description": "Created at or after (ISO 8601 with a timezone)"},
                {"name": "until", "in": "query", "schema": when,
                 "description": "Created before (ISO 8601 with a timezone)"},
                {"name": "limit", "in": "query", "schema": {
                    "type": "integer", "minimum": 1, "maximum": LIMIT_MAX,
                    "default": LIMIT_DEFAULT}},
                {"name": "cursor", "in": "query", "schema": {"type": "string"}}])},
        "/api/admin/jobs/{id}/cancel": {"post": op("Cancel any user's pending or running job", {
            "200": _json(_ref("Job"), "The cancelled job"), "404": _err("NotFound"),
            "409": _err("Conflict")}, parameters=[_JOB_ID])},
        "/api/admin/jobs/{id}/requeue": {"post": op(
            "Run any job again from the start (any status but pending)", {
                "200": _json(_ref("Job"), "The job, pending again"), "404": _err("NotFound"),
                "409": _err("Conflict")}, parameters=[_JOB_ID])},
        "/api/admin/schedules/{name}/run": {"post": op(
            "Enqueue a schedule's job now (its ticks are unchanged)", {
                "202": _json(_ref("Job"), "The new job"), "404": _err("NotFound"),
                "409": _err("Conflict"), "422": _err("Invalid")}, parameters=[name])},
    }


def _schemas() -> dict[str, Any]:
    return {
        "Job": {"type": "object", "properties": {
            "id": {"type": "string", "format": "uuid"},
            "type": {"type": "string"},
            "status": {"type": "string", "enum": _STATUSES},
            "progress": {"type": "object",
                         "description": "{current, total, stage, ...} as the task reports it"},
            "result": {"description": "Output when complete; {error, message} on error"},
            "params": {"type": "object"},
            "priority": {"type": "integer"},
            "attempts": {"type": "integer"},
            "max_attempts": {"type": "integer"},
            "user_id": {"type": ["integer", "null"]},
            "version": {"type": "integer", "description": "Bumped on every change (SSE id)"},
            "created_at": _TS, "updated_at": _TS, "run_after": _TS,
            "started_at": _TS, "finished_at": _TS,
            "depends_on": {"type": "array", "items": {"type": "string", "format": "uuid"},
                           "description": "Jobs that must complete before this one runs"},
            "waiting_for": {"type": "integer",
                            "description": "How many of depends_on have not completed yet"},
            "workflow_id": {"type": ["string", "null"], "format": "uuid"},
            "unreadable": {"type": "array", "items": {"type": "string"},
                           "description": "Only when some are: the fields shown as null "
                                          "because their stored value cannot be read "
                                          "(docs/dba.md)"}}},
        "Workflow": {"type": "object", "properties": {
            "workflow_id": {"type": "string", "format": "uuid"},
            "summary": {"type": "object", "properties": {
                "total": {"type": "integer"}, "done": {"type": "integer"},
                "finished": {"type": "boolean"},
                "failed": {"type": ["string", "null"], "format": "uuid"},
                "by_status": {"type": "object"}}},
            "jobs": {"type": "array", "items": _ref("Job")},
            "jobs_truncated": {"type": "boolean"}}},
        "NewJob": {"type": "object", "required": ["type"], "additionalProperties": False,
                   "properties": {
                       "type": {"type": "string", "description": "See GET /api/types"},
                       "params": {"type": "object", "default": {}},
                       "priority": {"type": "integer", "minimum": PRIORITY_MIN,
                                    "maximum": PRIORITY_MAX, "default": 0,
                                    "description": "Lower runs first"},
                       "run_after": {"type": "string", "format": "date-time",
                                     "description": "ISO 8601 with a timezone, from "
                                                    "0001-01-02T00:00:00Z to "
                                                    "9999-12-30T23:59:59Z"},
                       "after": {"type": "array", "maxItems": 1000,
                                 "items": {"type": "string", "format": "uuid"},
                                 "description": "Your jobs that must complete first "
                                                "(docs/workflows.md)"},
                       "run_if_dependency_fails": {"type": "boolean", "default": False},
                       "workflow_id": {"type": "string", "format": "uuid",
                                       "description": "Group jobs under an id of your choice "
                                                      "(inherited from after's jobs if unset)"}}},
        "JobList": {"type": "object", "properties": {
            "jobs": {"type": "array", "items": _ref("Job")},
            "next_cursor": {"type": ["string", "null"]}}},
        "Me": {"type": "object", "properties": {"user": {"type": "object", "properties": {
            "id": {"type": "integer"}, "name": {"type": "string"},
            "is_admin": {"type": "boolean", "description": "Sees the operator view"}}}}},
        "Overview": {"type": "object", "properties": {
            "now": {"type": "string", "format": "date-time"},
            "counts": {"type": "array", "items": {"type": "object", "properties": {
                "type": {"type": "string"}, "status": {"type": "string", "enum": _STATUSES},
                "jobs": {"type": "integer"}}}},
            "queue": {"type": "object", "properties": {
                "pending": {"type": "integer"},
                "oldest_pending_seconds": {"type": ["number", "null"]}}},
            "throughput": {"type": "object", "properties": {
                "since": {"type": "string", "format": "date-time"},
                "minutes": {"type": "array", "items": {"type": "object", "properties": {
                    "minute": {"type": "string", "format": "date-time"},
                    "started": {"type": "integer"}, "completed": {"type": "integer"},
                    "failed": {"type": "integer"}}}}}},
            "workers": {"type": "array", "items": {"type": "object", "properties": {
                "worker_id": {"type": "string"}, "machine": {"type": "string"},
                "pid": {"type": "integer"}, "processes": {"type": "integer"},
                "running": {"type": "integer"}, "alive": {"type": "boolean"},
                "heartbeat_at": {"type": "string", "format": "date-time"},
                "io_processes": {"type": "integer"},
                "io_concurrency": {"type": "object",
                                   "additionalProperties": {"type": "integer"}},
                "io_jobs": {"type": "array", "items": {"type": "object", "properties": {
                    "pid": {"type": "integer"}, "running": {"type": "integer"},
                    "waiting": {"type": "integer"}}}}}}},
            "stuck": {"type": "array", "items": {"type": "object"},
                      "description": "Rows of the bgjobs_stuck view"},
            "schedules": {"type": "array", "items": {"type": "object", "properties": {
                "name": {"type": "string"}, "type": {"type": "string"},
                "cron": {"type": "string"}, "timezone": {"type": "string"},
                "next_run": {"type": ["string", "null"], "format": "date-time"}}}},
            "limits": {"type": "array", "items": {"type": "object"}},
            "types": {"type": "array", "items": {"type": "string"}}}},
        "Error": {"type": "object", "properties": {"error": {
            "type": "object", "required": ["code", "message"], "properties": {
                "code": {"type": "string"}, "message": {"type": "string"},
                "job_id": {"type": "string", "format": "uuid"}}}}},
    }
