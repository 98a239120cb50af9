"""The supervisor's periodic duties, one per module (River's internal/maintenance/ is the model).

Each duty has a name, an interval and a ``run_once``; ``next_at`` (time.monotonic()) says when
it is due. The supervisor asks each duty whether it is due and runs it with ``run_due``: a duty
that raises is logged and tried again after its interval, so one duty's bug stops neither the
claims nor the other duties. An outage (DatabaseUnavailable) is not a duty's bug: it goes up to
the supervisor, which backs off all database work.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable

from bgjobs.core.errors import DatabaseUnavailable

log = logging.getLogger(__name__)


class Duty:
    #: what the logs call it
    name = "duty"
    #: False for a duty that never talks to Postgres itself: it runs even while the database
    #: is down
    uses_database = True

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.next_at = 0.0  # due at once

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def wake_at(self, now: float) -> float | None:
        """When the supervisor's loop must wake up for this duty (None: no need)."""
        return self.next_at

    def run(self, now: float) -> None:
        """Run once; due again after the interval (also after an error) unless it says sooner."""
        self.next_at = now + self.interval
        self.run_once(now)

    def run_once(self, now: float) -> None:
        raise NotImplementedError

    def failed(self, now: float) -> None:
        """Called after ``run`` raised (not an outage)."""

    def halt(self) -> None:
        """Never due again (the supervisor is stopping)."""
        self.next_at = math.inf


def run_due(duties: Iterable[Duty], now: float) -> None:
    """Run every duty that is due; log and skip one that raises. Outages go up."""
    for duty in duties:
        if not duty.due(now):
            continue
        try:
            duty.run(now)
        except DatabaseUnavailable:
            raise
        except Exception:
            duty.failed(now)
            log.exception("%s failed; retrying later (in %.1fs)", duty.name, duty.interval)
