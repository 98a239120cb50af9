"""What the supervisor must write, buffered and flushed in one statement per kind per tick.

Every write is fenced by the store on (status, worker_id, attempts): ids missing from a batch's
answer were cancelled or taken back meanwhile, and the supervisor stops their handlers. A buffer
is cleared only once its statement succeeded, so a database outage delays writes but never
loses them (and the fence makes a late retry harmless).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from bgjobs.core.errors import InvalidInput
from bgjobs.core.jobs import Attempt, Completion, Failure, ProgressUpdate, Release
from bgjobs.core.store import Store
from bgjobs.worker.child_handle import ChildProcess

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Running:
    """A job this machine claimed, from the claim until its outcome is known."""

    attempt: Attempt
    job_type: str
    max_attempts: int
    version: int  # the row's version right after our claim
    child: ChildProcess
    claimed_at: float
    #: set once the handler was asked to stop; past it the child process is killed
    cancel_deadline: float | None = None

    @property
    def id(self) -> UUID:
        return self.attempt.job_id

    def describe(self) -> str:
        attempt = f"attempt {self.attempt.attempt}/{self.max_attempts}"
        return f"job {self.id} ({self.job_type}, {attempt})"


class Outbox:
    """Outcomes (core/jobs.py's types, as made) with the Running job each is about (for logs)."""

    def __init__(self) -> None:
        self.progress: dict[UUID, tuple[Running, ProgressUpdate]] = {}
        self.done: list[tuple[Running, Completion]] = []
        self.failed: list[tuple[Running, Failure]] = []
        self.released: list[tuple[Running, Release]] = []
        #: jobs to heartbeat; on the same connection as progress writes, so that two of our
        #: statements never lock the same running rows in different orders (a deadlock)
        self.heartbeat: list[Running] = []

    def __bool__(self) -> bool:
        return bool(self.progress or self.done or self.failed or self.released
                    or self.heartbeat)

    def __len__(self) -> int:
        """Jobs with an outcome waiting to be written."""
        return len(self.done) + len(self.failed) + len(self.released)

    def report(self, r: Running, state: dict[str, Any]) -> None:
        """The latest progress of a running job (replaces any not yet written)."""
        self.progress[r.id] = (r, ProgressUpdate(r.attempt, state))

    def take(self) -> Outbox:
        """Everything buffered so far, as a batch to flush; this outbox starts empty."""
        batch = Outbox()
        batch.progress, self.progress = self.progress, {}
        batch.done, self.done = self.done, []
        batch.failed, self.failed = self.failed, []
        batch.released, self.released = self.released, []
        batch.heartbeat, self.heartbeat = self.heartbeat, []
        return batch

    def put_back(self, batch: Outbox) -> None:
        """Re-queue what a failed flush left unwritten, ahead of anything newer."""
        self.progress = {**batch.progress, **self.progress}
        self.done = batch.done + self.done
        self.failed = batch.failed + self.failed
        self.released = batch.released + self.released
        self.heartbeat = self.heartbeat or batch.heartbeat

    def flush(self, store: Store) -> set[UUID]:
        """Write everything buffered; returns ids of running jobs found lost (stop them).

        Each part is cleared once written, so after an exception the rest can be retried.
        """
        lost: set[UUID] = set()
        if self.heartbeat:
            beats = self.heartbeat
            owned = store.heartbeat([r.attempt for r in beats])
            self.heartbeat = []
            lost |= {r.id for r in beats if r.id not in owned}
        if self.progress:
            items = list(self.progress.values())
            owned = store.report_progress([u for _, u in items])
            self.progress.clear()
            lost |= {r.id for r, _ in items if r.id not in owned}
        if self.done:
            self._complete(store)
        if self.failed:
            self._fail(store)
        if self.released:
            released = self.released
            owned = store.release([rel.attempt for _, rel in released])
            self.released = []
            for r, rel in released:
                if r.id in owned:
                    log.info("handed %s back to pending (%s)", r.describe(), rel.why)
        return lost

    def _complete(self, store: Store) -> None:
        batch = self.done
        try:
            owned = store.complete([c for _, c in batch])
        except InvalidInput as exc:
            # One bad result must not block the others: write them one at a time.
            if len(batch) == 1:
                self.done = []
                r, c = batch[0]
                error = {"error": "ResultNotStorable", "message": str(exc)[:500]}
                self.failed.append((r, Failure(r.attempt, error, False, 0.0, "", c.duration)))
                return
            for i, item in enumerate(batch):
                self.done = [item]
                try:
                    self._complete(store)
                except Exception:
                    self.done = batch[i:]
                    raise
            return
        self.done = []
        verbose = log.isEnabledFor(logging.INFO)  # describe() costs, at thousands a second
        for r, c in batch:
            if r.id in owned:
                if verbose:
                    log.info("finished %s in %.3fs", r.describe(), c.duration)
            else:
                log.info("%s finished in %.3fs but was no longer ours (cancelled or taken "
                         "back): result dropped", r.describe(), c.duration)

    def _fail(self, store: Store) -> None:
        batch = self.failed
        statuses = store.fail([f for _, f in batch])
        self.failed = []
        for r, f in batch:
            status = statuses.get(r.id)
            what = f"{f.error.get('error')}: {f.error.get('message')}"
            trace = f"\n{f.traceback.rstrip()}" if f.traceback else ""
            if status is None:
                log.info("%s failed (%s) but was no longer ours", r.describe(), what)
            elif status == "pending":
                log.warning("%s failed after %.3fs: %s; retrying in %.2fs%s",
                            r.describe(), f.duration, what, f.delay, trace)
            else:
                reason = "not retryable" if not f.retryable else "no attempts left"
                log.error("%s failed after %.3fs: %s; giving up (%s)%s",
                          r.describe(), f.duration, what, reason, trace)


def elapsed(r: Running) -> float:
    return time.monotonic() - r.claimed_at
