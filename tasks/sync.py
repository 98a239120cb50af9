"""Write what the registered tasks declare into Postgres, where every worker and the claim see
it: exclusivity, max_attempts and limits into bgjobs_job_types (the one upsert the API and
`bgjobs migrate` use too, through registry.record_types), cron schedules into bgjobs_schedules.
Workers run it at start.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from bgjobs.core.store import Store
from bgjobs.tasks.registry import Task, type_rows

log = logging.getLogger(__name__)


def sync_registry(store: Store, tasks: Mapping[str, Task], default_timezone: str = "UTC") -> None:
    """Record every registered type with its declared limits and schedule (idempotent)."""
    store.sync_job_types(type_rows(tasks.values()))
    declared = [(t.name, t.cron, t.timezone or default_timezone)
                for t in tasks.values() if t.cron]
    store.sync_schedules(declared, [t.name for t in tasks.values() if not t.cron])
    for name, cron, tz in declared:
        log.debug("schedule %s: %s (%s)", name, cron, tz)
