"""Write what the registered tasks declare into Postgres, where every worker and the claim see
it: limits, exclusivity and max_attempts into bgjobs_job_types, cron schedules into
bgjobs_schedules. Workers run it at start (the API and `bgjobs migrate` record exclusivity and
max_attempts too: registry.record_types).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from bgjobs.core.store import Store
from bgjobs.tasks.registry import Task

log = logging.getLogger(__name__)


def sync_registry(store: Store, tasks: Mapping[str, Task], default_timezone: str = "UTC") -> None:
    """Record every registered type with its declared limits and schedule (idempotent)."""
    store.sync_job_types([(t.name, t.max_running, t.starts_per_second) for t in tasks.values()])
    store.record_job_types([(t.name, t.exclusive, t.max_attempts) for t in tasks.values()])
    declared = [(t.name, t.cron, t.timezone or default_timezone)
                for t in tasks.values() if t.cron]
    store.sync_schedules(declared, [t.name for t in tasks.values() if not t.cron])
    for name, cron, tz in declared:
        log.debug("schedule %s: %s (%s)", name, cron, tz)
