"""The supervisor's writer: flushes outbox batches on its own connection, in a thread.

While Postgres records one batch of results (and fires their notifications), the supervisor
loop goes on claiming on its own connection, so both of the machine's Postgres backends work at
once. One batch is in flight at a time, which keeps each job's writes in order (progress,
then its outcome). Results come back through a queue, with a byte on a socket to wake the
selector.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
from uuid import UUID

from bgjobs.core.store import Store
from bgjobs.worker.connection import OneConnection
from bgjobs.worker.outbox import Outbox

log = logging.getLogger(__name__)

#: (the batch, ids of running jobs found lost, the error that stopped the flush or None)
Result = tuple[Outbox, set[UUID], BaseException | None]


class Writer:
    def __init__(self, url: str) -> None:
        self.db = OneConnection(url)
        self.store = Store(self.db)
        self.in_flight: Outbox | None = None
        self._inbox: queue.SimpleQueue[Outbox | None] = queue.SimpleQueue()
        self._results: queue.SimpleQueue[Result] = queue.SimpleQueue()
        self.wake_r, self._wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self._thread = threading.Thread(target=self._run, name="bgjobs-writer", daemon=True)
        self._thread.start()

    def backlog(self) -> int:
        """Outcomes being written now."""
        return len(self.in_flight) if self.in_flight is not None else 0

    def submit(self, batch: Outbox) -> None:
        assert self.in_flight is None
        self.in_flight = batch
        self._inbox.put(batch)

    def results(self) -> list[Result]:
        """Finished flushes (call when ``wake_r`` is readable)."""
        try:
            while self.wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass
        out = []
        while True:
            try:
                out.append(self._results.get_nowait())
            except queue.Empty:
                break
        if out:
            self.in_flight = None
        return out

    def close(self) -> None:
        self._inbox.put(None)
        self._thread.join(10)
        self.db.close()
        self.wake_r.close()
        self._wake_w.close()

    def _run(self) -> None:
        while (batch := self._inbox.get()) is not None:
            error: BaseException | None = None
            lost: set[UUID] = set()
            try:
                lost = batch.flush(self.store)
            except Exception as exc:  # noqa: BLE001 - handed to the loop, which retries
                error = exc
            self._results.put((batch, lost, error))
            self._wake_w.send(b"\0")
