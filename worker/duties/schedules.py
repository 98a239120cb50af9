"""Schedules: every supervisor looks at bgjobs_schedules; Postgres decides who enqueues.

Each tick of a schedule is claimed with a compare-and-set on its row (``last_tick < tick``),
and the job is enqueued in the same transaction, so however many supervisors see the tick at
once, exactly one of them enqueues it, and a crash between the two leaves neither. There is no
leader to elect or lose. A tick found more than MISFIRE_GRACE late (no worker was running) is
skipped, unless the schedule says ``catch_up``: then one job stands for every missed tick.
The duty looks every poll interval, or at the soonest next tick if that comes first.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from datetime import UTC, datetime, timedelta

from bgjobs.core.errors import Conflict
from bgjobs.core.store import Store
from bgjobs.core.store_ops import Schedule
from bgjobs.tasks import enqueue
from bgjobs.tasks.registry import InvalidParams, UnknownTask
from bgjobs.tasks.schedules import InvalidSchedule, last_tick, next_tick
from bgjobs.worker.duties import Duty

log = logging.getLogger(__name__)

#: A tick handled later than this after its time was missed (no worker ran then).
MISFIRE_GRACE = timedelta(seconds=60)


def idempotency_key(name: str, tick: datetime) -> str:
    """One key per schedule and tick: a second insert for the same tick cannot happen."""
    return f"bgjobs-schedule:{name}:{tick.astimezone(UTC).isoformat()}"


class Scheduler:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._reported: set[tuple[str, str]] = set()  # bad schedules already logged

    def run(self, types: Collection[str], now: datetime | None = None) -> datetime | None:
        """Handle every due tick of the schedules of ``types``; the soonest next tick."""
        now = now or datetime.now(UTC)
        soonest: datetime | None = None
        for schedule in self.store.schedules():
            if not schedule.enabled or schedule.job_type not in types:
                continue
            try:
                tick = last_tick(schedule.cron, schedule.timezone, now)
                upcoming = next_tick(schedule.cron, schedule.timezone, now)
            except InvalidSchedule as exc:
                self._report(schedule, str(exc))
                continue
            if tick > (schedule.last_tick or schedule.created_at):
                self.fire(schedule, tick, now)
            soonest = upcoming if soonest is None else min(soonest, upcoming)
        return soonest

    def fire(self, schedule: Schedule, tick: datetime, now: datetime) -> bool:
        """Take ``tick`` of the schedule if no one has; enqueue its job unless it was missed."""
        late = now - tick > MISFIRE_GRACE
        with self.store.connection() as c, c.transaction():
            if not self.store.advance_schedule(c, schedule.name, tick):
                log.debug("schedule %s: the tick of %s was taken by another worker",
                          schedule.name, tick.isoformat())
                return False
            if late and not schedule.catch_up:
                log.warning("schedule %s: skipped the tick of %s (missed: no worker was "
                            "running; set catch_up to run one job for missed ticks)",
                            schedule.name, tick.isoformat())
                return True
            try:
                job = enqueue.enqueue(
                    schedule.job_type, schedule.params, priority=schedule.priority,
                    idempotency_key=idempotency_key(schedule.name, tick), conn=c,
                    store=self.store)
            except (Conflict, InvalidParams, enqueue.InvalidRequest, UnknownTask) as exc:
                # The tick is spent either way: retrying it would fail the same way.
                log.error("schedule %s: no job for the tick of %s: %s", schedule.name,
                          tick.isoformat(), exc)
                return True
            self.store.schedule_enqueued(c, schedule.name, job.id)
        log.info("schedule %s: enqueued job %s (%s) for the tick of %s%s", schedule.name, job.id,
                 schedule.job_type, tick.isoformat(), " (catching up)" if late else "")
        return True

    def _report(self, schedule: Schedule, problem: str) -> None:
        key = (schedule.name, problem)
        if key not in self._reported:
            self._reported.add(key)
            log.error("schedule %s is ignored: %s", schedule.name, problem)


class Schedules(Duty):
    name = "periodic jobs"

    def __init__(self, store: Store, types: Callable[[], Collection[str]],
                 interval: float) -> None:
        super().__init__(interval)
        self.scheduler = Scheduler(store)
        self.types = types

    def run_once(self, now: float) -> None:
        soonest = self.scheduler.run(self.types())
        if soonest is not None:
            wait = (soonest - datetime.now(UTC)).total_seconds()
            self.next_at = now + max(0.0, min(self.interval, wait))
