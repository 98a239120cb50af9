"""The supervisor's children and the jobs they hold: hand out, hear back, cancel, replace.

Outcomes go to the outbox, which the supervisor flushes in batches; nothing here touches the
database. A child that dies unexpectedly fails its running job (retryable) and hands back the
ones it had not started; a child killed on purpose (a cancelled handler that would not stop,
shutdown) hands back its unstarted jobs.

IO processes (worker/io_child.py; slots after the process-per-job ones) run the jobs of the
concurrent types they are handed at once, up to each type's concurrency, and start the few
handed ahead as others end: an IO process's death fails the jobs it ran (retryable) and hands
back those it held unstarted (see _started), and killing it on purpose hands back all but the
one it was killed for.
"""

from __future__ import annotations

import logging
import selectors
import time
from typing import Any
from uuid import UUID

from bgjobs.core.jobs import Attempt, Claimed, Failure, Release
from bgjobs.tasks import registry
from bgjobs.worker import protocol
from bgjobs.worker.child_handle import ChildProcess
from bgjobs.worker.outbox import Outbox, Running, elapsed

log = logging.getLogger(__name__)

#: Most jobs of a concurrent type an IO process holds unstarted (see ahead()).
IO_AHEAD = 100
#: Hand a child about this many seconds of work at once (many no-op jobs, one slow job).
BATCH_SECONDS = 0.05


def ahead(concurrency: int) -> int:
    """Jobs of a concurrent type handed to an IO process beyond its concurrency, which it
    starts the moment others end (no wait for a claim): a fifth of it, at most a claim slice."""
    return min(IO_AHEAD, concurrency // 5)


class Fleet:
    def __init__(self, selector: selectors.BaseSelector, outbox: Outbox, size: int,
                 cancel_grace: float, max_batch: int, log_level: str,
                 io_types: dict[str, int] | None = None, io_processes: int = 0,
                 block_threshold: float = 0.1) -> None:
        self.selector = selector
        self.outbox = outbox
        self.log_level = log_level
        #: concurrent types (type -> jobs one IO process runs at once); {}: no IO processes
        self.io_types = dict(io_types or {}) if io_processes else {}
        self.procs = size  # slots 0..size-1: a process per job; the IO processes after them
        self.size = size + (io_processes if self.io_types else 0)
        self.block_threshold = block_threshold
        self.cancel_grace = cancel_grace
        self.max_batch = max_batch
        self.children: dict[int, ChildProcess] = {}
        self.running: dict[UUID, Running] = {}
        self.respawn_at: dict[int, float] = {}
        self.task_names: tuple[str, ...] = ()
        self.avg_duration = 1.0  # seconds per job, recent average; sizes the hand-outs
        self.stopping = False

    # Hand-outs --------------------------------------------------------------------------------

    def capacity(self) -> dict[ChildProcess, int]:
        """How many jobs each child may take now: none while it still has half a batch."""
        batch = max(1, min(self.max_batch, int(BATCH_SECONDS / self.avg_duration)))
        return {c: batch - len(c.jobs) for c in self.children.values()
                if c.ready and len(c.jobs) <= batch // 2 and not c.io}

    def io_capacity(self, job_type: str, hand_ahead: bool = True) -> dict[ChildProcess, int]:
        """How many more jobs of a concurrent type each IO process may take now: to run, and
        with ``hand_ahead`` to start next. A limited type gets none ahead: a job handed ahead
        is ``running`` while it waits, and would count against a limit it does not use."""
        free = {c: c.io[job_type] + (ahead(c.io[job_type]) if hand_ahead else 0)
                - c.running[job_type]
                for c in self.children.values() if c.ready and job_type in c.io}
        return {c: n for c, n in free.items() if n > 0}

    def hand_out(self, jobs: list[Claimed], capacity: dict[ChildProcess, int],
                 worker_id: str) -> None:
        """Give claimed jobs (best first) to children round-robin, one message per child."""
        now = time.monotonic()
        verbose = log.isEnabledFor(logging.INFO)  # describe() costs, at thousands a second
        order = [c for c, n in capacity.items() if n > 0]
        left = dict(capacity)
        specs: dict[ChildProcess, list[protocol.JobSpec]] = {c: [] for c in order}
        i = 0
        for job in jobs:
            while left[order[i % len(order)]] <= 0:
                i += 1
            child = order[i % len(order)]
            left[child] -= 1
            i += 1
            r = Running(Attempt(job.id, worker_id, job.attempt), job.job_type,
                        job.max_attempts, job.version, child, now)
            self.running[job.id] = r
            if child.io:
                child.jobs[job.id] = job.job_type
                child.running[job.job_type] += 1
            else:
                child.jobs[job.id] = None
            specs[child].append(protocol.JobSpec(job.id, job.job_type, job.params, job.attempt,
                                                 job.dependencies, worker_id))
            if verbose:
                log.info("claimed %s for process %s", r.describe(), child.pid)
        for child, batch in specs.items():
            if batch:
                child.send(protocol.Jobs(batch))

    def io_jobs(self) -> list[dict[str, int]]:
        """Per live IO process, the jobs it runs and those handed ahead it has not started."""
        out = []
        for child in sorted(self.children.values(), key=lambda c: c.slot):
            if child.io:
                running = len(self._started(child))
                out.append({"pid": child.pid, "running": running,
                            "waiting": len(child.jobs) - running})
        return out

    # Children ---------------------------------------------------------------------------------

    def spawn(self, slot: int) -> None:
        io = self.io_types if slot >= self.procs else None
        child = ChildProcess(slot, self.log_level, io, self.block_threshold)
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

    def _on_message(self, child: ChildProcess, msg: protocol.FromChild) -> None:
        if isinstance(msg, protocol.Progress):
            r = self.running.get(msg.job_id)
            if r is not None:
                self.outbox.report(r, msg.state)
        elif isinstance(msg, protocol.ProgressMany):
            for job_id, state in msg.updates:
                r = self.running.get(job_id)
                if r is not None:
                    self.outbox.report(r, state)
        elif isinstance(msg, protocol.Done):
            for done in msg.finished:
                r = self._finish(child, done.job_id, done.duration)
                if r is not None:
                    if done.progress is None and (last := self._last_progress(r)) is not None:
                        done = done._replace(progress=last)
                    self.outbox.done.append((r, done))
        elif isinstance(msg, Failure):
            r = self._finish(child, msg.job_id, msg.duration)
            if r is not None:
                if msg.progress is not None:  # written just before the failure, same tick
                    self.outbox.report(r, msg.progress)
                self.outbox.failed.append((r, msg))
        elif isinstance(msg, protocol.Cancelled):
            r = self._finish(child, msg.job_id, msg.duration)
            if r is not None:
                self.outbox.progress.pop(r.id, None)
                how = (f"its handler stopped after {msg.duration:.3f}s"
                       if msg.duration is not None else "before it started")
                log.info("cancelled %s: %s", r.describe(), how)
        elif isinstance(msg, protocol.Dropped):
            for job_id in msg.job_ids:
                r = self._finish(child, job_id, None)
                if r is not None:
                    self.outbox.released.append(
                        (r, Release(r.attempt, "shutting down; it had not started")))
        elif isinstance(msg, protocol.Hello):
            child.ready = True
            self.task_names = tuple(msg.task_names)
            log.debug("process %s ready with tasks %s", msg.pid, ", ".join(msg.task_names))
            if len(self.children) == self.size and all(c.ready for c in self.children.values()):
                log.info("%d worker processes ready", len(self.children))
        else:
            log.error("unknown message from process %s: %r", child.pid, msg)

    def _finish(self, child: ChildProcess, job_id: UUID,
                duration: float | None) -> Running | None:
        if (job_type := child.jobs.pop(job_id, None)) is not None:
            child.running[job_type] -= 1
        r = self.running.pop(job_id, None)
        if r is not None and duration is not None and not child.io:  # sizes process batches
            self.avg_duration = 0.9 * self.avg_duration + 0.1 * duration
        return r

    def _last_progress(self, r: Running) -> dict[str, Any] | None:
        entry = self.outbox.progress.pop(r.id, None)
        return entry[1].progress if entry else None

    def _died(self, child: ChildProcess) -> None:
        self._drop(child)
        code = child.popen.returncode
        started = self._started(child)
        log.error("worker process %s exited unexpectedly (code %s)%s", child.pid, code,
                  f" running {len(started)} jobs: each fails (retryable)" + (
                      f"; {len(child.jobs) - len(started)} not started go back to pending"
                      if len(child.jobs) > len(started) else "") if child.io else "")
        for job_id in list(child.jobs):
            r = self._finish(child, job_id, None)
            if r is None or r.cancel_deadline is not None:
                continue
            if job_id in started:
                error = {"error": "WorkerCrashed",
                         "message": f"the worker process running it exited with code {code}"}
                self.outbox.failed.append(
                    (r, Failure(r.attempt, error, True, _retry_delay(r), "", elapsed(r))))
            else:
                self.outbox.released.append(
                    (r, Release(r.attempt, "its worker process crashed before it started")))
        if not self.stopping:
            # A child that dies before it is even ready would die again at once: slow down.
            self.respawn_at[child.slot] = time.monotonic() + (0.1 if child.ready else 2.0)

    @staticmethod
    def _started(child: ChildProcess) -> set[UUID]:
        """The jobs a child had started: a process per job, the first it was handed; an IO
        process, the first ``concurrency`` unfinished of each type, as it starts them in the
        order handed (one that started after a job whose end we had not heard of yet counts as
        not started, and gets its attempt back)."""
        if not child.io:
            return set(list(child.jobs)[:1])
        seen: dict[str, int] = {}
        out = set()
        for job_id, job_type in child.jobs.items():
            if job_type is not None:
                seen[job_type] = seen.get(job_type, 0) + 1
                if seen[job_type] <= child.io.get(job_type, 0):
                    out.add(job_id)
        return out

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
                self.outbox.released.append((r, Release(r.attempt, why)))
        if not self.stopping:
            self.spawn(child.slot)

    # Cancellation and shutdown ------------------------------------------------------------------

    def lost(self, ids: set[UUID], how: str) -> None:
        """Jobs no longer ours (cancelled, reaped, requeued): ask their handlers to stop."""
        now = time.monotonic()
        for job_id in ids:
            r = self.running.get(job_id)
            if r is None or r.cancel_deadline is not None:
                continue
            r.cancel_deadline = now + self.cancel_grace
            log.info("%s was cancelled or taken back (seen by %s): stopping its handler",
                     r.describe(), how)
            r.child.send(protocol.Cancel(job_id))

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
            child.send(protocol.Drop())

    def kill_busy(self) -> None:
        """Shutdown deadline: kill children still running jobs; those jobs go back to pending."""
        for child in list(self.children.values()):
            if child.jobs:
                self.kill(child, "shutting down before it finished")


def _retry_delay(r: Running) -> float:
    """The task's backoff rule (the same the child applies to a handler's error)."""
    try:
        return registry.get(r.job_type).delay_before_retry(r.attempt.attempt)
    except registry.UnknownTask:
        return registry.retry_delay(registry.DEFAULT_RETRY_DELAY, r.attempt.attempt)
