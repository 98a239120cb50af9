"""The supervisor's children and the jobs they hold: hand out, hear back, cancel, replace.

Outcomes go to the outbox, which the supervisor flushes in batches; nothing here touches the
database. A child that dies unexpectedly fails its running job (retryable) and hands back the
ones it had not started; a child killed on purpose (a cancelled handler that would not stop,
shutdown) hands back its unstarted jobs.
"""

from __future__ import annotations

import logging
import selectors
import time
from typing import Any
from uuid import UUID

from server.store import Attempt
from worker import protocol
from worker.children import ChildProcess
from worker.outbox import Outbox, Running, elapsed

log = logging.getLogger(__name__)

#: Hand a child about this many seconds of work at once (many no-op jobs, one slow job).
BATCH_SECONDS = 0.05

#: A claimed job as Store.claim_specs returns it: (id, type, params, attempt, max, version)
Claimed = tuple[UUID, str, dict[str, Any], int, int, int]


class Fleet:
    def __init__(self, selector: selectors.BaseSelector, outbox: Outbox, size: int,
                 cancel_grace: float, max_batch: int) -> None:
        self.selector = selector
        self.outbox = outbox
        self.size = size
        self.cancel_grace = cancel_grace
        self.max_batch = max_batch
        self.children: dict[int, ChildProcess] = {}
        self.running: dict[str, Running] = {}
        self.respawn_at: dict[int, float] = {}
        self.task_names: tuple[str, ...] = ()
        self.avg_duration = 1.0  # seconds per job, recent average; sizes the hand-outs
        self.stopping = False

    # Hand-outs --------------------------------------------------------------------------------

    def capacity(self) -> dict[ChildProcess, int]:
        """How many jobs each child may take now: none while it still has half a batch."""
        batch = max(1, min(self.max_batch, int(BATCH_SECONDS / self.avg_duration)))
        return {c: batch - len(c.jobs) for c in self.children.values()
                if c.ready and len(c.jobs) <= batch // 2}

    def hand_out(self, jobs: list[Claimed], capacity: dict[ChildProcess, int],
                 worker_id: str) -> None:
        """Give claimed jobs (best first) to children round-robin, one message per child."""
        now = time.monotonic()
        order = [c for c, n in capacity.items() if n > 0]
        left = dict(capacity)
        specs: dict[ChildProcess, list[protocol.JobSpec]] = {c: [] for c in order}
        i = 0
        for uuid, job_type, params, attempt, max_attempts, version in jobs:
            while left[order[i % len(order)]] <= 0:
                i += 1
            child = order[i % len(order)]
            left[child] -= 1
            i += 1
            job_id = str(uuid)
            r = Running(job_id, Attempt(uuid, worker_id, attempt), job_type, max_attempts,
                        version, child, now)
            self.running[job_id] = r
            child.jobs[job_id] = None
            specs[child].append((job_id, job_type, params, attempt))
            log.info("claimed %s for process %s", r.describe(), child.pid)
        for child, batch in specs.items():
            if batch:
                child.send((protocol.JOBS, batch))

    # Children ---------------------------------------------------------------------------------

    def spawn(self, slot: int) -> None:
        child = ChildProcess(slot)
        self.children[slot] = child
        self.selector.register(child.conn, selectors.EVENT_READ, lambda: self._on_child(child))

    def respawn(self, now: float) -> None:
        for slot, at in list(self.respawn_at.items()):
            if now >= at and not self.stopping:
                del self.respawn_at[slot]
                self.spawn(slot)

    def close(self) -> None:
        for child in list(self.children.values()):
            child.close()

    def _on_child(self, child: ChildProcess) -> None:
        if child.conn.closed:  # killed earlier in this same round of events
            return
        try:
            messages = child.receive()
        except (EOFError, OSError):
            messages = None
        for msg in messages or ():
            self._on_message(child, msg)
        if messages is None:
            self._died(child)

    def _on_message(self, child: ChildProcess, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        if kind == protocol.PROGRESS:
            r = self.running.get(msg[1])
            if r is not None:
                self.outbox.progress[r.id] = (r, msg[2])
        elif kind == protocol.DONE:
            for job_id, result, progress, duration in msg[1]:
                r = self._finish(child, job_id, duration)
                if r is not None:
                    self.outbox.done.append((r, result, progress or self._last_progress(r),
                                             duration))
        elif kind == protocol.FAILED:
            job_id, error, retryable, delay, tb, duration, progress = msg[1:]
            r = self._finish(child, job_id, duration)
            if r is not None:
                progress = progress or self._last_progress(r)
                if progress is not None:  # written just before the failure, same tick
                    self.outbox.progress[r.id] = (r, progress)
                self.outbox.failed.append((r, error, retryable, delay, tb, duration))
        elif kind == protocol.CANCELLED:
            job_id, duration = msg[1], msg[2]
            r = self._finish(child, job_id, duration)
            if r is not None:
                self.outbox.progress.pop(r.id, None)
                how = (f"its handler stopped after {duration:.3f}s" if duration is not None
                       else "before it started")
                log.info("cancelled %s: %s", r.describe(), how)
        elif kind == protocol.DROPPED:
            for job_id in msg[1]:
                r = self._finish(child, job_id, None)
                if r is not None:
                    self.outbox.released.append((r, "shutting down; it had not started"))
        elif kind == protocol.HELLO:
            child.ready = True
            self.task_names = tuple(msg[2])
            log.debug("process %s ready with tasks %s", msg[1], ", ".join(msg[2]))
            if len(self.children) == self.size and all(c.ready for c in self.children.values()):
                log.info("%d worker processes ready", len(self.children))

    def _finish(self, child: ChildProcess, job_id: str, duration: float | None) -> Running | None:
        child.jobs.pop(job_id, None)
        r = self.running.pop(job_id, None)
        if r is not None and duration is not None:
            self.avg_duration = 0.9 * self.avg_duration + 0.1 * duration
        return r

    def _last_progress(self, r: Running) -> dict[str, Any] | None:
        entry = self.outbox.progress.pop(r.id, None)
        return entry[1] if entry else None

    def _died(self, child: ChildProcess) -> None:
        self._drop(child)
        code = child.popen.returncode
        log.error("worker process %s exited unexpectedly (code %s)", child.pid, code)
        for n, job_id in enumerate(list(child.jobs)):
            r = self._finish(child, job_id, None)
            if r is None or r.cancel_deadline is not None:
                continue
            if n == 0:  # the one it was running
                error = {"error": "WorkerCrashed",
                         "message": f"the worker process running it exited with code {code}"}
                delay = 2.0 * 2 ** (r.attempt.attempt - 1)
                self.outbox.failed.append((r, error, True, delay, "", elapsed(r)))
            else:
                self.outbox.released.append((r, "its worker process crashed before it started"))
        if not self.stopping:
            # A child that dies before it is even ready would die again at once: slow down.
            self.respawn_at[child.slot] = time.monotonic() + (0.1 if child.ready else 2.0)

    def _drop(self, child: ChildProcess) -> None:
        self.selector.unregister(child.conn)
        if self.children.get(child.slot) is child:
            del self.children[child.slot]
        child.kill()

    def kill(self, child: ChildProcess, why: str) -> None:
        """Kill a child on purpose; its unstarted jobs go back to pending."""
        self._drop(child)
        for job_id in list(child.jobs):
            r = self._finish(child, job_id, None)
            if r is not None and r.cancel_deadline is None:
                self.outbox.released.append((r, why))
        if not self.stopping:
            self.spawn(child.slot)

    # Cancellation and shutdown ------------------------------------------------------------------

    def lost(self, ids: set[str], how: str) -> None:
        """Jobs no longer ours (cancelled, reaped, requeued): ask their handlers to stop."""
        now = time.monotonic()
        for job_id in ids:
            r = self.running.get(job_id)
            if r is None or r.cancel_deadline is not None:
                continue
            r.cancel_deadline = now + self.cancel_grace
            log.info("%s was cancelled or taken back (seen by %s): stopping its handler",
                     r.describe(), how)
            r.child.send((protocol.CANCEL, job_id))

    def next_deadline(self) -> float | None:
        times = [r.cancel_deadline for r in self.running.values() if r.cancel_deadline]
        times += self.respawn_at.values()
        return min(times) if times else None

    def enforce_cancel_grace(self, now: float) -> None:
        for r in list(self.running.values()):
            if r.cancel_deadline is not None and now >= r.cancel_deadline and r.id in self.running:
                log.warning("%s ignored its cancellation for %.0fs: killing process %s and "
                            "starting a new one", r.describe(), self.cancel_grace, r.child.pid)
                self._finish(r.child, r.id, None)
                self.kill(r.child, "its process was killed to stop a cancelled job")

    def drop_unstarted(self) -> None:
        """Shutdown: children give back the jobs they have not started."""
        self.stopping = True
        for child in self.children.values():
            child.send((protocol.DROP,))

    def kill_busy(self) -> None:
        """Shutdown deadline: kill children still running jobs; those jobs go back to pending."""
        for child in list(self.children.values()):
            if child.jobs:
                self.kill(child, "shutting down before it finished")
