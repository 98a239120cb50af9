"""Claiming: take pending jobs for the free processes, on a wake-up, at a due time or a poll.

Due when a notification woke us (``wake``), when the last claim came back full (``more``), when
the soonest not-yet-due job comes due (a retry's backoff, a scheduled job, a rate limit's next
start) and every poll interval, the fallback for a missed notification: a poll also re-reads
the limited types, which a DBA may have changed. With no free process the jobs that fell to us
are relayed to the idle supervisors (see worker/wakeups.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

from bgjobs.core.store import Store
from bgjobs.worker.duties import Duty
from bgjobs.worker.fleet import Fleet
from bgjobs.worker.wakeups import Wakeups


class Claimer(Duty):
    name = "claiming"

    def __init__(self, store: Store, fleet: Fleet, wakeups: Wakeups, worker_id: str,
                 types: Callable[[], tuple[str, ...]], backlog: Callable[[], int], *,
                 poll_interval: float, lease: int, backlog_limit: int) -> None:
        super().__init__(poll_interval)  # next_at: the next fallback poll
        self.store = store
        self.fleet = fleet
        self.wakeups = wakeups
        self.worker_id = worker_id
        self.types = types
        self.backlog = backlog
        self.lease = lease
        self.backlog_limit = backlog_limit
        self.next_at = time.monotonic() + poll_interval
        self.wake = True  # claim at start: jobs may be waiting
        self.more = False  # the last claim was full: claim again as soon as there is room
        self.next_due: float | None = None
        self.halted = False
        self.retry_at = 0.0  # after a failed claim
        self.limited: dict[str, float | None] = {}  # limited types -> starts per second
        self.limits_read = False

    def room(self) -> bool:
        """Whether a claim could take jobs now (free children, results not piling up)."""
        # Unwritten results are held back jobs: past a few batches' worth, let the writer catch
        # up first. That also keeps every statement (and the set of running jobs) small.
        return bool(self.types()) and self.backlog() < self.backlog_limit \
            and bool(self.fleet.capacity())

    def due(self, now: float) -> bool:
        if now < self.retry_at:  # the last run failed
            return False
        if now >= self.next_at or not self.limits_read:
            return True
        if self.next_due is not None and now >= self.next_due:
            return True
        return not self.halted and (self.wake or self.more)

    def wake_at(self, now: float) -> float | None:
        times = [self.next_at]
        if self.next_due is not None:
            times.append(self.next_due)
        if not self.halted and (self.wake or self.more) and self.room():
            times.append(now)
        return max(min(times), self.retry_at)

    def run(self, now: float) -> None:
        if now >= self.next_at or not self.limits_read:
            self.next_at = now + self.interval
            self.wake = self.wakeups.sweep = True
            self.limited = self.store.limited_types()  # a DBA may have changed them
            self.limits_read = True
        if self.next_due is not None and now >= self.next_due:
            self.next_due, self.wake = None, True
            self.wakeups.sweep = True
        if not self.halted and (self.wake or self.more):
            self.run_once(now)

    def run_once(self, now: float) -> None:
        if not self.room():
            # `wake` stays set: claim once there is room; meanwhile idle peers may take them.
            self._relay(self.wakeups.unclaimed, now)
            return
        capacity = self.fleet.capacity()
        limit = sum(capacity.values())
        jobs = self.store.claim_specs(self.worker_id, self.types(), limit=limit,
                                      lease_seconds=self.lease)
        self.wake = False
        full = len(jobs) == limit
        # Claim again at once only when many may be waiting (a bulk insert, a poll): a full
        # claim of the one job that fell to a one-process supervisor says nothing of others,
        # and the claim after it would be empty.
        self.more = full and self.wakeups.sweep
        self.wakeups.claimed(full)
        if not self.more:
            self._schedule_next_due()
            self._schedule_rate_refill(now)
        if jobs:
            self.fleet.hand_out(jobs, capacity, self.worker_id)

    def failed(self, now: float) -> None:
        self.retry_at = now + self.interval

    def halt(self) -> None:
        self.halted = True

    def _schedule_next_due(self) -> None:
        """Wake when the soonest not-yet-due job (a retry's backoff, a scheduled job) is due."""
        due = self.store.next_run_after(self.types())
        self.next_due = None
        if due is not None:
            wait = (due - datetime.now(UTC)).total_seconds()
            if wait > 0:  # past-due rows are being claimed by someone else right now
                self.next_due = time.monotonic() + min(wait, self.interval)

    def _schedule_rate_refill(self, now: float) -> None:
        """Rate-limited types earn a start every 1/rate s, unannounced: claim again by then."""
        types = self.types()
        rates = [r for t, r in self.limited.items() if r and t in types]
        if rates:
            at = now + min(self.interval, max(0.25, 1 / max(rates)))
            self.next_due = at if self.next_due is None else min(self.next_due, at)

    def _relay(self, types: set[str], now: float) -> None:
        """Wake every idle supervisor for ``types`` (see worker/wakeups.py)."""
        relay = self.wakeups.relay(types, now)
        if relay:
            self.store.wake_workers(relay)
