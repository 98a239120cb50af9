"""Retention: delete finished jobs past their age, a small batch at a time, one purger at a time.

Every supervisor runs a Purger, every BGJOBS_PURGE_INTERVAL seconds (60); each batch is one
statement behind a transaction-level advisory lock (``pg_try_advisory_xact_lock``), so two
machines never purge at once, and a large backlog goes out in short transactions with pauses
between them instead of one long lock and one burst of WAL. Ages are per type in
bgjobs_job_types, else BGJOBS_KEEP_*_DAYS.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from bgjobs.core.config import Config
from bgjobs.core.store import Store
from bgjobs.core.store_ops import Retention
from bgjobs.worker.duties import Duty

log = logging.getLogger(__name__)

#: Rows per delete statement.
BATCH = 500
#: Pause between batches while a backlog lasts (the loop claims and writes meanwhile).
PAUSE = 0.2
#: How often to look for expired jobs (the default of BGJOBS_PURGE_INTERVAL).
INTERVAL = 60.0


def retention(cfg: Config) -> Retention:
    return Retention(complete=timedelta(days=cfg.keep_complete_days),
                     error=timedelta(days=cfg.keep_error_days),
                     cancelled=timedelta(days=cfg.keep_cancelled_days))


class Purger(Duty):
    name = "retention"

    def __init__(self, store: Store, keep: Retention, interval: float = INTERVAL) -> None:
        super().__init__(interval)
        self.store = store
        self.keep = keep
        self.deleted = 0  # in the current backlog, for one log line at its end

    def run_once(self, now: float) -> None:
        """One batch (``now`` is time.monotonic()); the next one soon while a backlog lasts."""
        deleted = self.store.purge_batch(BATCH, self.keep)
        if deleted is not None and deleted >= BATCH:
            self.deleted += deleted
            self.next_at = now + PAUSE
            return
        self.deleted += deleted or 0
        if self.deleted:
            log.info("retention: deleted %d finished job(s) past their age", self.deleted)
        self.deleted = 0
