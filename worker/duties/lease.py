"""Job heartbeats: every lease/3, mark each job this machine runs as alive (its lease).

A running job's heartbeat comes from its supervisor, not its handler, so a CPU-bound handler is
never reaped while its machine lives. The beats go out through the writer, after any progress
already queued (see Outbox.heartbeat), so this duty itself never touches Postgres.
"""

from __future__ import annotations

from bgjobs.worker.duties import Duty
from bgjobs.worker.fleet import Fleet
from bgjobs.worker.outbox import Outbox


class LeaseHeartbeats(Duty):
    name = "job heartbeats"
    uses_database = False

    def __init__(self, fleet: Fleet, outbox: Outbox, interval: float) -> None:
        super().__init__(interval)
        self.fleet = fleet
        self.outbox = outbox
        self.idle = True

    def due(self, now: float) -> bool:
        if not self.fleet.running:
            self.idle = True
            return False
        if self.idle:
            # Jobs were just claimed (the claim set their heartbeat): the first beat after one
            # interval, not at once.
            self.idle = False
            self.next_at = now + self.interval
        return now >= self.next_at

    def wake_at(self, now: float) -> float | None:
        if not self.fleet.running:
            return None
        return now + self.interval if self.idle else self.next_at

    def run_once(self, now: float) -> None:
        self.outbox.heartbeat = list(self.fleet.running.values())

    def soon(self) -> None:
        """Beat at the next tick (a new LISTEN connection: we may have been away)."""
        self.idle = False
        self.next_at = 0.0
