"""Cron schedules: reading 5-field expressions in a time zone, and the ticks they make.

The expressions are evaluated by cronsim (a small, dependency-free, well-tested library that
handles day-of-month/day-of-week "or" rules and DST gaps and repeats the way cron does); bgjobs
only checks that an expression has the standard five fields and that the zone exists.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from bgjobs.core.errors import InvalidSchedule as InvalidSchedule
from bgjobs.core.store_ops import Schedule


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidSchedule(f"unknown time zone {name!r} (use an IANA name such as UTC or "
                              "Europe/Paris)") from None


def check_cron(expr: str, timezone: str = "UTC") -> None:
    """Raise InvalidSchedule unless ``expr`` is a 5-field cron expression and the zone exists."""
    if not isinstance(expr, str) or len(expr.split()) != 5:
        raise InvalidSchedule(f"a cron expression has 5 fields (minute hour day-of-month month "
                              f"day-of-week), got {expr!r}")
    try:
        CronSim(expr, datetime.now(zone(timezone)))
    except CronSimError as exc:
        raise InvalidSchedule(f"bad cron expression {expr!r}: {exc}") from None


def next_tick(expr: str, timezone: str, after: datetime) -> datetime:
    """The first tick strictly after ``after``, in UTC."""
    check_cron(expr, timezone)
    return next(CronSim(expr, after.astimezone(zone(timezone)))).astimezone(UTC)


def last_tick(expr: str, timezone: str, now: datetime) -> datetime:
    """The latest tick at or before ``now``, in UTC."""
    check_cron(expr, timezone)
    # Reverse iteration starts strictly before its start; ticks fall on whole minutes.
    start = now.astimezone(zone(timezone)).replace(microsecond=0) + timedelta(seconds=1)
    return next(CronSim(expr, start, reverse=True)).astimezone(UTC)


def describe(schedule: Schedule, now: datetime | None = None) -> dict[str, Any]:
    """A schedule as the CLI and the operator view show it, with its next run (None if bad)."""
    now = now or datetime.now(UTC)
    try:
        upcoming: str | None = next_tick(schedule.cron, schedule.timezone, now).isoformat()
        problem = None
    except InvalidSchedule as exc:
        upcoming, problem = None, str(exc)
    return {
        "name": schedule.name, "type": schedule.job_type, "cron": schedule.cron,
        "timezone": schedule.timezone, "params": schedule.params, "enabled": schedule.enabled,
        "catch_up": schedule.catch_up, "source": schedule.source,
        "next_run": upcoming if schedule.enabled else None,
        "last_tick": schedule.last_tick.isoformat() if schedule.last_tick else None,
        "last_job_id": str(schedule.last_job_id) if schedule.last_job_id else None,
        "problem": problem,
    }
