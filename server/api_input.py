"""What the API accepts: JSON bodies, job requests, list queries and cursors, checked strictly.

Status codes (documented in docs/api.md): a request that cannot be read (wrong content type
415, malformed JSON or a body that is not an object 400, a query value that cannot be read:
empty, not ASCII digits, a cursor this API did not make, 400) is refused before anything else;
a readable request whose content is wrong (unknown type, bad params, priority, run_after,
unknown field) is a 422. Query values are all 400, in the API and the Flask extension alike:
they are the request's syntax (a URL), and a GET never carries content to judge.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flask import Request
from werkzeug.exceptions import RequestEntityTooLarge

from bgjobs.core.jobs import Job, Status, time_out_of_range
from bgjobs.server.errors import ApiError
from bgjobs.tasks.enqueue import InvalidRequest, check_idempotency_key

LIMIT_DEFAULT, LIMIT_MAX = 50, 200
# Deep enough for any real params; shallow enough that nothing downstream hits a recursion limit.
MAX_JSON_DEPTH = 64
JOB_FIELDS = frozenset({"type", "params", "priority", "run_after", "after",
                        "run_if_dependency_fails", "workflow_id"})
#: At most this many jobs in one request's ``after`` (a larger fan-in: enqueue_many, SQL).
AFTER_MAX = 1000
#: A job type in a query string: what a task name can be (1-50 characters, no controls).
TYPE_QUERY_PATTERN = r"^[^\x00-\x1f\x7f]{1,50}$"
#: A cursor as encode_cursor writes it: unpadded base64url.
CURSOR_PATTERN = r"^[A-Za-z0-9_-]+$"
#: A limit: ASCII digits only (int() would also take " 5", "1_0" and full-width digits).
LIMIT_PATTERN = r"^[0-9]{1,4}$"
#: A created_at a cursor may carry as Postgres printed it, when Python could not read it (a
#: row written before the table refused such times): year 10000 on, or a BC date (or infinity).
RAW_TIME_PATTERN = (r"(?P<year>[0-9]{4,6})-(?P<month>[0-9]{2})-(?P<day>[0-9]{2}) "
                    r"(?P<hour>[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,6})?"
                    r"[+-](0[0-9]|1[0-5])(:[0-5][0-9]){0,2}(?P<bc> BC)?")
UUID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"


@dataclass(frozen=True)
class JobRequest:
    job_type: str
    params: Any
    priority: int
    run_after: datetime | None
    after: list[uuid.UUID] | None = None
    run_if_dependency_fails: bool = False
    workflow_id: uuid.UUID | None = None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text} is out of range")
    return value


def _depth_ok(value: Any, depth: int = 0) -> bool:
    if depth > MAX_JSON_DEPTH:
        return False
    if isinstance(value, dict):
        return all(_depth_ok(v, depth + 1) for v in value.values())
    if isinstance(value, list):
        return all(_depth_ok(v, depth + 1) for v in value)
    return True


def json_body(request: Request, *, required: bool = True) -> dict[str, Any]:
    """The request body as a JSON object, sent as application/json.

    The content type is required even for an empty body: a plain HTML form (another site's
    page) cannot send it, so no job is made by a cross-site form post. An empty body with it
    is ``{}`` when not ``required``.
    """
    data = request.get_data(cache=True)  # raises 413 over MAX_CONTENT_LENGTH
    limit = request.max_content_length
    if request.content_length is None and limit is not None and len(data) >= limit:
        # A chunked body is cut at the limit, not refused: whatever follows is too much.
        raise RequestEntityTooLarge()
    return parse_json(data, request.mimetype, required=required)


def parse_json(data: bytes, mimetype: str | None, *, required: bool = True) -> dict[str, Any]:
    """``json_body``'s rules for a body already read (the Flask and the ASGI routes share it)."""
    if not mimetype or not (mimetype == "application/json" or mimetype.endswith("+json")):
        raise ApiError(415, "unsupported_media_type",
                       f"send the body as application/json (got {mimetype or 'none'})")
    if not data and not required:
        return {}
    if not data:
        raise ApiError(400, "bad_request", "the request body is empty; send a JSON object")
    try:
        value = json.loads(data.decode("utf-8"), parse_constant=_reject_constant,
                           parse_float=_finite_float)
    except UnicodeDecodeError:
        raise ApiError(400, "malformed_json", "the request body is not UTF-8") from None
    except RecursionError:
        raise ApiError(400, "malformed_json", "the JSON body is nested too deeply") from None
    except ValueError as exc:
        raise ApiError(400, "malformed_json",
                       f"the request body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ApiError(400, "bad_request", "the request body must be a JSON object")
    if not _depth_ok(value):
        raise ApiError(400, "malformed_json",
                       f"the JSON body is nested more than {MAX_JSON_DEPTH} levels deep")
    return value


def job_request(body: dict[str, Any]) -> JobRequest:
    """The fields of ``POST /api/jobs``, checked (params are the task's to check)."""
    unknown = sorted(set(body) - JOB_FIELDS)
    if unknown:
        raise _invalid(f"unknown field(s): {', '.join(unknown)}; allowed: "
                       f"{', '.join(sorted(JOB_FIELDS))}")
    job_type = body.get("type")
    if not isinstance(job_type, str) or not job_type:
        raise _invalid("type is required: the name of a job type (see GET /api/types)")
    params = body.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ApiError(422, "invalid_params", "params must be a JSON object")
    anyway = body.get("run_if_dependency_fails", False)
    if not isinstance(anyway, bool):
        raise _invalid("run_if_dependency_fails must be true or false")
    workflow = body.get("workflow_id")
    if workflow is not None:
        try:
            workflow = uuid.UUID(workflow)
        except (TypeError, ValueError, AttributeError):
            raise _invalid(f"workflow_id must be a UUID, got {workflow!r}") from None
    return JobRequest(job_type, params, priority(body.get("priority", 0)),
                      run_after(body.get("run_after")), after(body.get("after")), anyway,
                      workflow)


def after(value: Any) -> list[uuid.UUID] | None:
    """``after``: the ids of the caller's jobs that must complete first (docs/workflows.md)."""
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > AFTER_MAX:
        raise _invalid(f"after must be a list of at most {AFTER_MAX} job ids")
    ids = []
    for item in value:
        try:
            ids.append(uuid.UUID(item))
        except (TypeError, ValueError, AttributeError):
            raise _invalid(f"after: {item!r} is not a job id (a UUID)") from None
    return ids or None


def priority(value: Any) -> int:
    """A JSON priority; its range is the enqueue path's to check."""
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool):
        raise _invalid(f"priority must be a whole number, got {value!r}")
    return value


def run_after(value: Any) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _invalid("run_after must be an ISO 8601 time with a timezone, as a string")
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise _invalid(f"run_after is not an ISO 8601 time: {value!r}") from None
    if when.tzinfo is None:
        raise _invalid(f"run_after needs a timezone (e.g. 'Z' or '+00:00'): {value!r}")
    problem = time_out_of_range("run_after", when)
    if problem:
        raise _invalid(problem)
    return when


def idempotency_key(request: Request) -> str | None:
    """The Idempotency-Key header; a malformed one makes the request unreadable (400)."""
    return idempotency_header(request.headers.get("Idempotency-Key"))


def idempotency_header(key: str | None) -> str | None:
    """An Idempotency-Key header's value, checked (400 if malformed)."""
    try:
        check_idempotency_key(key)
    except InvalidRequest as exc:
        raise ApiError(400, "bad_request", f"Idempotency-Key: {exc}") from None
    return key


@dataclass(frozen=True)
class ListQuery:
    status: str | None
    job_type: str | None
    limit: int
    #: (created_at, id) of the previous page's last job; created_at is the text Postgres
    #: printed when that job's could not be read (see RAW_TIME_PATTERN)
    before: tuple[datetime | str, uuid.UUID] | None


def list_query(args: Any) -> ListQuery:
    unknown = sorted(set(args) - {"status", "type", "limit", "cursor"})
    if unknown:
        raise bad_query(f"unknown query parameter(s): {', '.join(unknown)}")
    status = args.get("status")
    if status is not None and status not in {s.value for s in Status}:
        raise bad_query(f"status must be one of {', '.join(s.value for s in Status)}")
    job_type = args.get("type")
    if job_type is not None and not re.fullmatch(TYPE_QUERY_PATTERN, job_type):
        raise bad_query("type is a job type's name: 1 to 50 characters, no control characters")
    raw_limit = args.get("limit")
    if raw_limit is not None and not re.fullmatch(LIMIT_PATTERN, raw_limit):
        raise bad_query(f"limit must be a whole number between 1 and {LIMIT_MAX} in ASCII "
                        f"digits, got {raw_limit!r}")
    limit = LIMIT_DEFAULT if raw_limit is None else int(raw_limit)
    if not 1 <= limit <= LIMIT_MAX:
        raise bad_query(f"limit must be between 1 and {LIMIT_MAX}, got {limit}")
    cursor = args.get("cursor")
    return ListQuery(status, job_type, limit, decode_cursor(cursor) if cursor is not None else None)


def page_of(rows: list[Job], limit: int) -> tuple[list[Job], str | None]:
    """The first ``limit`` of ``rows`` (read with ``limit + 1``) and the next page's cursor.

    The one extra row tells whether another page exists without a count query.
    """
    page = rows[:limit]
    last = page[-1] if page else None
    created: datetime | str | None = None
    if last is not None:
        # A created_at that could not be read still orders the list: page on from its text.
        created = last.created_at or dict(last.unreadable).get("created_at")
    cursor = (encode_cursor(created, last.id)
              if len(rows) > limit and last is not None and created is not None else None)
    return page, cursor


def encode_cursor(created_at: datetime | str, id_: uuid.UUID) -> str:
    """An opaque cursor: the (created_at, id) of the last job of a page."""
    shown = created_at.isoformat() if isinstance(created_at, datetime) else created_at
    raw = json.dumps([shown, str(id_)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime | str, uuid.UUID]:
    """The position a cursor of encode_cursor names; anything else is a 400 (not one of ours).

    Its time goes to Postgres in UTC: Python takes offsets Postgres refuses (+23:59).
    """
    refused = bad_query("cursor is not one this API returned (use next_cursor as is)")
    if not re.fullmatch(CURSOR_PATTERN, cursor):
        raise refused
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, id_ = json.loads(raw)
        if not isinstance(id_, str) or not re.fullmatch(UUID_PATTERN, id_):
            raise ValueError("not a UUID")
        if isinstance(created, str) and _postgres_time(created):
            return created, uuid.UUID(id_)
        when = datetime.fromisoformat(created)
        if when.tzinfo is None or not created.isascii():
            raise ValueError("naive time")
        return when.astimezone(UTC), uuid.UUID(id_)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError, OverflowError):
        raise refused from None


def _postgres_time(text: str) -> bool:
    """Whether ``text`` is a time as Postgres prints one Python cannot hold, and Postgres
    reads back (a cursor's raw created_at: what it sends must not be refused there)."""
    if text in ("infinity", "-infinity"):
        return True
    found = re.fullmatch(RAW_TIME_PATTERN, text)
    if found is None:
        return False
    year = int(found["year"])
    if found["bc"]:
        if not 1 <= year <= 4713:
            return False
        year = 1 - year  # astronomical numbering: 1 BC is year 0, a leap year
    elif not 10000 <= year <= 294275:
        return False
    try:  # the calendar repeats every 400 years: is this day in its month?
        datetime(2000 + year % 400, int(found["month"]), int(found["day"]))
    except ValueError:
        return False
    return True


def _invalid(message: str) -> ApiError:
    return ApiError(422, "invalid_request", message)


def bad_query(message: str) -> ApiError:
    return ApiError(400, "bad_query", message)
