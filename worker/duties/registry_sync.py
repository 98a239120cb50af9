"""Registry sync: write what the loaded tasks declare (types, limits, schedules) into Postgres.

Once per supervisor, at start, before anything else: the claim's limits and the schedules are
read from the tables it fills (see tasks/sync.py). Retried after its interval until it works.
"""

from __future__ import annotations

import math

from bgjobs.core.store import Store
from bgjobs.tasks import registry
from bgjobs.tasks.sync import sync_registry
from bgjobs.worker.duties import Duty


class RegistrySync(Duty):
    name = "registry sync"

    def __init__(self, store: Store, timezone: str, retry_interval: float) -> None:
        super().__init__(retry_interval)
        self.store = store
        self.timezone = timezone
        self.done = False

    def run_once(self, now: float) -> None:
        sync_registry(self.store, registry.load_tasks(), self.timezone)
        self.done = True
        self.next_at = math.inf
