"""The worker's own row in bgjobs_workers: who runs, where, with how many processes and jobs,
and what each of its IO processes holds.

Written every lease/3 for the operator view and SQL (docs/dba.md); removed at a clean stop. A
row left by a crashed worker goes stale and the purge drops it.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable

from bgjobs.core.store import Store
from bgjobs.core.store_ops import IoProcesses
from bgjobs.worker.duties import Duty
from bgjobs.worker.fleet import Fleet

log = logging.getLogger(__name__)


class WorkerBeat(Duty):
    name = "worker heartbeat"

    def __init__(self, store: Store, worker_id: str, fleet: Fleet,
                 types: Callable[[], tuple[str, ...]], lease: int, interval: float) -> None:
        super().__init__(interval)
        self.store = store
        self.worker_id = worker_id
        self.fleet = fleet
        self.types = types
        self.lease = lease

    def run_once(self, now: float) -> None:
        fleet = self.fleet
        io = IoProcesses(fleet.size - fleet.procs, fleet.io_types, fleet.io_jobs())
        self.store.worker_heartbeat(self.worker_id, socket.gethostname(), os.getpid(),
                                    fleet.procs, len(fleet.running), self.types(), self.lease,
                                    io)

    def forget(self) -> None:
        """Remove our row (a clean stop); a failure only leaves it to go stale."""
        try:
            self.store.worker_stopped(self.worker_id)
        except Exception as exc:  # noqa: BLE001 - the row goes stale and the purger drops it
            log.warning("could not remove this worker from bgjobs_workers: %s", exc)
