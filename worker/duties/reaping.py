"""Reaping: take back running jobs whose heartbeat is older than their lease (a lost worker).

Back to pending while attempts remain, else error; never a job of a live worker (the SQL
function bgjobs_reap decides, one reaper at a time). The same statement lists the LISTEN
backends of the supervisors sharing new jobs with us (see worker/wakeups.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from uuid import UUID

from bgjobs.core.store import Store
from bgjobs.worker.duties import Duty
from bgjobs.worker.wakeups import Wakeups

log = logging.getLogger(__name__)


class Reaper(Duty):
    name = "reaping"

    def __init__(self, store: Store, worker_id: str, listen_name: str, wakeups: Wakeups,
                 interval: float, running: Callable[[], Iterable[UUID]] | None = None) -> None:
        super().__init__(interval)
        #: the jobs this worker runs: alive, never reaped, even if their row names us after a
        #: lost write (a failover); any other job naming us was lost (014_reaper_own_lost_jobs)
        self.running = running
        self.store = store
        self.worker_id = worker_id
        self.listen_name = listen_name
        self.wakeups = wakeups

    def run_once(self, now: float) -> None:
        reaped, self.wakeups.peers = self.store.reap_and_list_listeners(
            self.listen_name, reaper=self.worker_id,
            running=None if self.running is None else list(self.running()))
        for row in reaped:
            log.warning("reaped job %s (%s) of a lost worker: now %s after %s attempt(s)",
                        row["id"], row["job_type"], row["status"], row["attempts"])

    def soon(self) -> None:
        """Run at the next tick (a new LISTEN backend: learn the peers again)."""
        self.next_at = 0.0
