"""The operator view's API, for admins only: every user's jobs, the queue, workers, schedules.

Routes under ``/api/admin/``. Every one first identifies the caller like the rest of the API,
then answers 403 unless ``bgjobs_users.is_admin``; nothing here is ever scoped to one user.
Reads go to Postgres on each request, through indexes that keep them fast on a large table
(see docs/dba.md, "The operator view").
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Blueprint, Flask, Response, g, jsonify, request

from bgjobs.core.jobs import Status, User, parse_job_id
from bgjobs.core.store import Store
from bgjobs.server import api_input
from bgjobs.server.errors import ApiError
from bgjobs.tasks import enqueue, registry, schedules

log = logging.getLogger(__name__)

#: The throughput chart's window.
CHART_MINUTES = 60
QUERY = frozenset({"status", "type", "user", "since", "until", "limit", "cursor"})


def register(app: Flask, store: Store, authenticate: Callable[[], User]) -> None:
    bp = Blueprint("admin", __name__, url_prefix="/api/admin")

    @bp.before_request
    def admins_only() -> None:
        g.user = authenticate()
        if not g.user.is_admin:
            raise ApiError(403, "forbidden", "the operator view is for admins "
                                             "(bgjobs user admin NAME)")

    @bp.get("/overview")
    def overview() -> Response:
        now = datetime.now(UTC)
        summary = store.summary()
        pending = [r for r in summary if r["status"] == Status.PENDING]
        ages = [r["oldest_pending_seconds"] for r in pending
                if r["oldest_pending_seconds"] is not None]
        return jsonify({
            "now": now.isoformat(),
            "counts": [{"type": r["job_type"], "status": r["status"], "jobs": r["jobs"]}
                       for r in summary],
            "queue": {"pending": sum(r["jobs"] for r in pending),
                      "oldest_pending_seconds": max(ages) if ages else None},
            "throughput": _throughput(store, now),
            "workers": [_worker(w) for w in store.workers()],
            "stuck": [_jsonable(row) for row in store.stuck_jobs()],
            "schedules": [schedules.describe(s, now) for s in store.schedules()],
            "limits": [_jsonable(row) for row in store.job_type_limits()],
            "types": sorted(registry.load_tasks()),
        })

    @bp.get("/jobs")
    def jobs() -> Response:
        args = request.args
        unknown = sorted(set(args) - QUERY)
        if unknown:
            raise api_input.bad_query(f"unknown query parameter(s): {', '.join(unknown)}")
        base = api_input.list_query({k: v for k, v in args.items()
                                     if k in ("status", "type", "limit", "cursor")})
        user_id = _user(store, args.get("user") or None)
        since, until = _time(args, "since"), _time(args, "until")
        rows = store.admin_list_jobs(user_id=user_id, status=base.status,
                                     job_type=base.job_type, since=since, until=until,
                                     limit=base.limit + 1, before=base.before)
        page, cursor = api_input.page_of(rows, base.limit)
        names = store.user_names(j.user_id for j in page if j.user_id is not None)
        return jsonify({
            "jobs": [{**j.to_json(), "user": names.get(j.user_id) if j.user_id else None,
                      "worker_id": j.worker_id} for j in page],
            "next_cursor": cursor,
        })

    @bp.post("/jobs/<raw_id>/cancel")
    def cancel(raw_id: str) -> Response:
        job = store.cancel(parse_job_id(raw_id))
        log.info("job %s cancelled by admin %s", job.id, g.user.id)
        return jsonify(job.to_json())

    @bp.post("/jobs/<raw_id>/requeue")
    def requeue(raw_id: str) -> Response:
        job = store.requeue(parse_job_id(raw_id))
        log.info("job %s requeued by admin %s", job.id, g.user.id)
        return jsonify(job.to_json())

    @bp.post("/schedules/<name>/run")
    def run_schedule(name: str) -> tuple[Response, int]:
        job = enqueue.run_schedule_now(store, name)
        log.info("schedule %s run now by admin %s: job %s", name, g.user.id, job.id)
        response = jsonify(job.to_json())
        response.headers["Location"] = f"/api/jobs/{job.id}"
        return response, 202

    app.register_blueprint(bp)


def _throughput(store: Store, now: datetime) -> dict[str, Any]:
    """Started, completed and failed per minute over the last CHART_MINUTES, oldest first."""
    end = now.replace(second=0, microsecond=0)
    since = end - timedelta(minutes=CHART_MINUTES - 1)
    minutes = {since + timedelta(minutes=n): {"started": 0, "completed": 0, "failed": 0}
               for n in range(CHART_MINUTES)}
    for row in store.throughput(since):
        bucket = minutes.get(row["minute"])
        if bucket is not None:
            bucket[row["kind"]] = row["jobs"]
    return {"since": since.isoformat(),
            "minutes": [{"minute": m.isoformat(), **counts} for m, counts in minutes.items()]}


def _worker(row: dict[str, Any]) -> dict[str, Any]:
    return {**_jsonable(row), "types": row["types"] or []}


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else str(v) if k == "id" else v
            for k, v in row.items()}


def _user(store: Store, raw: str | None) -> int | None:
    """A user filter by name or id; an unknown name matches no job (an empty page)."""
    if raw is None:
        return None
    if raw.isascii() and raw.isdigit():  # str.isdigit alone takes "²" and full-width digits
        if len(raw) > 10 or int(raw) > 2**31 - 1:
            raise api_input.bad_query("user is a user name or id (an id is at most 2147483647)")
        return int(raw)
    if len(raw) > 64:
        raise api_input.bad_query("user is a user name or id")
    user = store.find_user("get_user_by_name", {"name": raw})
    return user.id if user is not None else -1


def _time(args: Any, name: str) -> datetime | None:
    raw = args.get(name) or None
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise api_input.bad_query(f"{name} must be an ISO 8601 time, got {raw!r}") from None
    if value.tzinfo is None:
        raise api_input.bad_query(f"{name} needs a timezone (Z or +02:00), got {raw!r}")
    try:
        return value.astimezone(UTC)  # Postgres refuses some offsets Python takes (+23:59)
    except OverflowError:
        raise api_input.bad_query(f"{name} is outside the times Python can hold, got {raw!r}"
                                  ) from None
