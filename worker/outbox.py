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

import psycopg

from server.store import Attempt, InvalidInput, Store
from worker.children import ChildProcess

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Running:
    """A job this machine claimed, from the claim until its outcome is known."""

    id: str
    attempt: Attempt
    job_type: str
    max_attempts: int
    version: int  # the row's version right after our claim
    child: ChildProcess
    claimed_at: float
    #: set once the handler was asked to stop; past it the child process is killed
    cancel_deadline: float | None = None

    def describe(self) -> str:
        attempt = f"attempt {self.attempt.attempt}/{self.max_attempts}"
        return f"job {self.id} ({self.job_type}, {attempt})"


Done = tuple[Running, Any, "dict[str, Any] | None", float]
Failed = tuple[Running, dict[str, Any], bool, float, str, float]


class Outbox:
    def __init__(self) -> None:
        self.progress: dict[str, tuple[Running, dict[str, Any]]] = {}
        self.done: list[Done] = []
        self.failed: list[Failed] = []
        self.released: list[tuple[Running, str]] = []
        self.check: dict[str, Running] = {}
        #: jobs to heartbeat; on the same connection as progress writes, so that two of our
        #: statements never lock the same running rows in different orders (a deadlock)
        self.heartbeat: list[Running] = []

    def __bool__(self) -> bool:
        return bool(self.progress or self.done or self.failed or self.released or self.check
                    or self.heartbeat)

    def __len__(self) -> int:
        """Jobs with an outcome waiting to be written."""
        return len(self.done) + len(self.failed) + len(self.released)

    def take(self) -> Outbox:
        """Everything buffered so far, as a batch to flush; this outbox starts empty."""
        batch = Outbox()
        batch.progress, self.progress = self.progress, {}
        batch.done, self.done = self.done, []
        batch.failed, self.failed = self.failed, []
        batch.released, self.released = self.released, []
        batch.check, self.check = self.check, {}
        batch.heartbeat, self.heartbeat = self.heartbeat, []
        return batch

    def put_back(self, batch: Outbox) -> None:
        """Re-queue what a failed flush left unwritten, ahead of anything newer."""
        self.progress = {**batch.progress, **self.progress}
        self.done = batch.done + self.done
        self.failed = batch.failed + self.failed
        self.released = batch.released + self.released
        self.check = {**batch.check, **self.check}
        self.heartbeat = self.heartbeat or batch.heartbeat

    def flush(self, store: Store) -> set[str]:
        """Write everything buffered; returns ids of running jobs found lost (stop them).

        Each part is cleared once written, so after an exception the rest can be retried.
        """
        lost: set[str] = set()
        if self.heartbeat:
            beats = self.heartbeat
            owned = store.heartbeat([r.attempt for r in beats])
            self.heartbeat = []
            lost |= {r.id for r in beats if r.attempt.job_id not in owned}
        if self.progress:
            items = list(self.progress.values())
            owned = store.report_progress([(r.attempt, p) for r, p in items])
            self.progress.clear()
            lost |= {r.id for r, _ in items if r.attempt.job_id not in owned}
        if self.done:
            self._complete(store)
        if self.failed:
            self._fail(store)
        if self.released:
            items2 = self.released
            owned = store.release([r.attempt for r, _ in items2])
            self.released = []
            for r, why in items2:
                if r.attempt.job_id in owned:
                    log.info("handed %s back to pending (%s)", r.describe(), why)
        if self.check:
            checking = self.check
            jobs = {str(j.id): j for j in store.get_jobs([r.attempt.job_id
                                                              for r in checking.values()])}
            self.check = {}
            for job_id, r in checking.items():
                job = jobs.get(job_id)
                if (job is None or job.status != "running" or job.worker_id != r.attempt.worker_id
                        or job.attempts != r.attempt.attempt):
                    lost.add(job_id)
        return lost

    def _complete(self, store: Store) -> None:
        batch = self.done
        try:
            owned = store.complete([(r.attempt, res, prog) for r, res, prog, _ in batch])
        except (psycopg.DataError, InvalidInput) as exc:
            # One bad result must not block the others: write them one at a time.
            if len(batch) == 1:
                r, _, _, duration = batch[0]
                self.done = []
                self.failed.append((r, {"error": "ResultNotStorable", "message": str(exc)[:500]},
                                    False, 0.0, "", duration))
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
        for r, _, _, duration in batch:
            if r.attempt.job_id in owned:
                log.info("finished %s in %.3fs", r.describe(), duration)
            else:
                log.info("%s finished in %.3fs but was no longer ours (cancelled or taken "
                         "back): result dropped", r.describe(), duration)

    def _fail(self, store: Store) -> None:
        batch = self.failed
        statuses = store.fail([(r.attempt, err, retryable, delay)
                                    for r, err, retryable, delay, _, _ in batch])
        self.failed = []
        for r, err, retryable, delay, tb, duration in batch:
            status = statuses.get(r.attempt.job_id)
            what = f"{err.get('error')}: {err.get('message')}"
            trace = f"\n{tb.rstrip()}" if tb else ""
            if status is None:
                log.info("%s failed (%s) but was no longer ours", r.describe(), what)
            elif status == "pending":
                log.warning("%s failed after %.3fs: %s; retrying in %.2fs%s",
                            r.describe(), duration, what, delay, trace)
            else:
                reason = "not retryable" if not retryable else "no attempts left"
                log.error("%s failed after %.3fs: %s; giving up (%s)%s",
                          r.describe(), duration, what, reason, trace)


def elapsed(r: Running) -> float:
    return time.monotonic() - r.claimed_at
