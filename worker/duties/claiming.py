"""Claiming: take pending jobs for the free processes, on a wake-up, at a due time or a poll.

Due when a notification woke us (``wake``), when the last claim came back full (``more``), when
the soonest not-yet-due job comes due (a retry's backoff, a scheduled job, a rate limit's next
start) and every poll interval, the fallback for a missed notification: a poll also re-reads
the limited types, which a DBA may have changed. With no free process the jobs that fell to us
are relayed to the idle supervisors (see worker/wakeups.py).

Jobs of a concurrent type (an IO process runs many at once: see worker/io_child.py) are claimed
apart, one statement per such type with room for it, so a process never holds more of a type
than its concurrency and the few it starts next (worker/fleet.py's ahead(); none for a type
with a limit, whose running jobs the limit counts); each such type
keeps its own ``wake``, ``more`` and ``sweep`` (so an empty claim for the other types never
stops its refills). Without concurrent types there is one
group, the process-per-job children, and one claim statement.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bgjobs.core.store import Store
from bgjobs.worker.duties import Duty
from bgjobs.worker.fleet import Fleet
from bgjobs.worker.wakeups import Wakeups

#: Most jobs of a concurrent type one claim takes (it claims again at once while they fill).
IO_CLAIM_SLICE = 100


@dataclass
class Group:
    """The claim state of one kind of slot: process-per-job children, or one IO type's."""

    wake: bool = True  # claim at start: jobs may be waiting
    more: bool = False  # the last claim was full: claim again as soon as there is room
    #: IO types only: many may be waiting (a '*' wake-up, a poll, a start) until a claim of
    #: the type comes back short (the process group uses Wakeups.sweep, as it always did)...
    sweep: bool = True
    #: ...or it was woken while it had no room: several jobs may have come meanwhile
    missed: bool = False


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
        self.procs = Group()
        self.io: dict[str, Group] = {}  # by concurrent type
        self.next_due: float | None = None
        self.halted = False
        self.retry_at = 0.0  # after a failed claim
        self.limited: dict[str, float | None] = {}  # limited types -> starts per second
        self.limits_read = False

    @property
    def wake(self) -> bool:
        """A claim is wanted at the next chance, for some kind of slot."""
        return self.procs.wake or any(g.wake for g in self.io.values())

    @wake.setter
    def wake(self, value: bool) -> None:
        for group in (self.procs, *self.io.values()):
            group.wake = value

    def woken(self, job_type: str, many: bool = False) -> None:
        """A notification of a job (``many``: of jobs) of ``job_type`` that is ours to claim."""
        group = self._group(job_type)
        group.wake = True
        group.sweep |= many

    def sweep(self) -> None:
        """Many jobs of any type may be waiting (a poll, a reconnect): claim while claims fill."""
        self.wake = self.wakeups.sweep = True
        for group in self.io.values():
            group.sweep = True

    def _group(self, job_type: str) -> Group:
        if job_type in self.fleet.io_types:
            return self.io.setdefault(job_type, Group())
        return self.procs

    def groups(self) -> list[tuple[Group, tuple[str, ...], Callable[[], dict[Any, int]]]]:
        """Each kind of slot: its claim state, its types, and its free slots by child."""
        types = self.types()
        io = self.fleet.io_types
        if not io:
            return [(self.procs, types, self.fleet.capacity)]
        out = [(self.procs, tuple(t for t in types if t not in io), self.fleet.capacity)]
        for t in types:
            if t in io:
                # A limited type's jobs are claimed only to run at once (Fleet.io_capacity).
                out.append((self._group(t), (t,), lambda t=t: self.fleet.io_capacity(
                    t, t not in self.limited)))  # type: ignore[misc]
        return out

    def room(self, types: tuple[str, ...] | None = None,
             capacity: Callable[[], dict[Any, int]] | None = None) -> bool:
        """Whether a claim could take jobs now (free children, results not piling up)."""
        # Unwritten results are held back jobs: past a few batches' worth, let the writer catch
        # up first. That also keeps every statement (and the set of running jobs) small.
        return bool(self.types() if types is None else types) \
            and self.backlog() < self.backlog_limit \
            and bool((capacity or self.fleet.capacity)())

    def _wanted(self) -> bool:
        return not self.halted and (self.procs.wake or self.procs.more or any(
            g.wake or g.more for g in self.io.values()))

    def due(self, now: float) -> bool:
        if now < self.retry_at:  # the last run failed
            return False
        if now >= self.next_at or not self.limits_read:
            return True
        if self.next_due is not None and now >= self.next_due:
            return True
        return self._wanted()

    def wake_at(self, now: float) -> float | None:
        times = [self.next_at]
        if self.next_due is not None:
            times.append(self.next_due)
        if self._wanted() and any((g.wake or g.more) and self.room(types, capacity)
                                  for g, types, capacity in self.groups()):
            times.append(now)
        return max(min(times), self.retry_at)

    def run(self, now: float) -> None:
        if now >= self.next_at or not self.limits_read:
            self.next_at = now + self.interval
            self.sweep()
            self.limited = self.store.limited_types()  # a DBA may have changed them
            self.limits_read = True
        if self.next_due is not None and now >= self.next_due:
            self.next_due = None
            self.sweep()
        if self._wanted():
            self.run_once(now)

    def run_once(self, now: float) -> None:
        started = time.monotonic()
        claims: list[tuple[Group, bool]] = []
        hand_outs = []
        crowded: set[str] = set()
        sweep = self.wakeups.sweep
        for group, types, free in self.groups():
            if not (group.wake or group.more):
                continue
            if not self.room(types, free):
                # `wake` stays set: claim once there is room; meanwhile idle peers may take them.
                crowded.update(types)
                group.missed |= group.wake and group is not self.procs
                continue
            capacity = free()
            limit = room = sum(capacity.values())
            if group is not self.procs:
                # Hundreds of free IO slots are filled a slice at a time: the first jobs start
                # while the next slice is claimed, instead of all waiting for one long claim.
                limit = min(limit, IO_CLAIM_SLICE)
            jobs = self.store.claim_specs(self.worker_id, types, limit=limit,
                                          lease_seconds=self.lease)
            group.wake = False
            full = len(jobs) == limit
            # Claim again at once only when many may be waiting (a bulk insert, a poll): a full
            # claim of the one job that fell to a one-process supervisor says nothing of others,
            # and the claim after it would be empty. An IO type woken while it was full may
            # have several waiting.
            if group is self.procs:
                group.more = full and sweep
            else:
                # A full slice with room left says nothing of what waits: look again.
                group.more = full and (limit < room or group.sweep or group.missed)
                group.sweep &= full
            group.missed = False
            claims.append((group, full))
            if jobs:
                hand_outs.append((jobs, capacity))
        if crowded:
            self._relay(self.wakeups.unclaimed & crowded if claims else self.wakeups.unclaimed,
                        now)
        if not claims:
            return
        # Wakeups.sweep is the process group's: only its claim may clear it.
        self.wakeups.claimed(next((full for g, full in claims if g is self.procs), True))
        if not any(group.more for group, _ in claims):
            self._schedule_next_due(time.monotonic() - started)
            self._schedule_rate_refill(now)
        for jobs, capacity in hand_outs:
            self.fleet.hand_out(jobs, capacity, self.worker_id)

    def failed(self, now: float) -> None:
        self.retry_at = now + self.interval

    def halt(self) -> None:
        self.halted = True

    def _schedule_next_due(self, claim_age: float) -> None:
        """Wake when the soonest job the claim could not take yet (a retry's backoff, a
        scheduled job) is due: at once when it came due during the claim."""
        wait = self.store.next_due_in(self.types(), claim_age)
        self.next_due = None
        if wait is not None:
            self.next_due = time.monotonic() + min(max(wait, 0.0), self.interval)

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
