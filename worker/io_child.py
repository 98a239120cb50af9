"""An IO worker process: runs many jobs of the concurrent types at once, on one event loop.

Started by the supervisor (worker/child_handle.py) as
``python -m bgjobs.worker.io_child FD PARENT_PID LOG_LEVEL BLOCK_THRESHOLD``; it speaks the
same protocol as a process-per-job child (worker/protocol.py), but runs up to each type's
``concurrency`` of its jobs at once; the supervisor hands it a few more (worker/fleet.py's
ahead()), which wait here in the order handed and start the moment others end, so a freed slot
never waits for a claim. At shutdown those go back unstarted (Drop).
An ``async def`` handler runs as a task on the loop; a plain one declared with ``concurrency``
runs in a thread. A cancelled async job has its task cancelled; one that ignores it is stopped
by the supervisor killing this process after the grace period (its other jobs go back to
pending). A watchdog thread names the job whose handler blocks the event loop.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any
from uuid import UUID

from bgjobs.core import config as config_mod
from bgjobs.core.jobs import Completion, Failure
from bgjobs.tasks.context import JobCancelled, JobContext, ProgressThrottle
from bgjobs.tasks.registry import InvalidParams, NonRetryable, Task, load_tasks
from bgjobs.worker import protocol
from bgjobs.worker.child_main import (
    FLUSH_INTERVAL,
    BadOutput,
    _check_storable,
    _clean,
    _die_with_parent,
)

log = logging.getLogger("bgjobs.worker.io_child")  # not __main__, as run with -m


class IoChild:
    def __init__(self, conn: Connection, tasks: dict[str, Task], block_threshold: float,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.conn = conn
        self.tasks = tasks
        self.loop = loop
        self.block_threshold = block_threshold
        self.send_lock = threading.Lock()
        self.cancelled: set[UUID] = set()
        #: the running jobs: their specs by asyncio task, their tasks by job id
        self.specs: dict[asyncio.Task[None], protocol.JobSpec] = {}
        self.running: dict[UUID, asyncio.Task[None]] = {}
        self.outbox: list[Completion] = []
        #: jobs handed beyond a type's concurrency wait here, started in order as others end
        self.limit = {name: t.io_concurrency or 1 for name, t in tasks.items()}
        self.active: dict[str, int] = {}
        self.queued: dict[str, deque[protocol.JobSpec]] = {}
        #: progress to send with the next flush, by job: hundreds of jobs' reports in one
        #: message, and a job that finishes first sends its last one with its result
        self.progress: dict[UUID, dict[str, Any]] = {}
        self.loop_thread = threading.get_ident()  # made on the thread that runs the loop
        self.flush_handle: asyncio.Handle | None = None
        self.last_flush = 0.0
        threads = sum(t.io_concurrency or 0 for t in tasks.values()
                      if not inspect.iscoroutinefunction(t.handler))
        self.threads = ThreadPoolExecutor(max(1, threads), thread_name_prefix="job")
        self.beat_at = 0.0  # when the loop's beat is due (monotonic)
        #: the job seen holding the loop while the beat was late (None: not seen)
        self.blocker: protocol.JobSpec | None = None
        self.seen = False
        self.warned = False  # said that the loop is still blocked

    def send(self, msg: protocol.FromChild) -> None:
        try:
            with self.send_lock:
                self.conn.send(msg)
        except OSError:  # the supervisor is gone (or closed us, stopping): nobody to tell
            os._exit(0)

    # Messages from the supervisor, read by a thread and handled on the loop -----------------

    def read_loop(self) -> None:
        try:
            while True:
                msg = self.conn.recv()
                self.loop.call_soon_threadsafe(self.handle, msg)
        except (EOFError, OSError):
            os._exit(0)

    def handle(self, msg: protocol.ToChild) -> None:
        if isinstance(msg, protocol.Jobs):
            for spec in msg.specs:
                if self.active.get(spec.job_type, 0) < self.limit.get(spec.job_type, 1):
                    self.start(spec)
                else:
                    self.queued.setdefault(spec.job_type, deque()).append(spec)
        elif isinstance(msg, protocol.Cancel):
            for waiting in self.queued.values():
                unstarted = next((s for s in waiting if s.job_id == msg.job_id), None)
                if unstarted is not None:
                    waiting.remove(unstarted)
                    self.send(protocol.Cancelled(msg.job_id, None))
                    return
            running = self.running.get(msg.job_id)
            if running is not None:
                self.cancelled.add(msg.job_id)
                task = self.tasks.get(self.specs[running].job_type)
                # A thread cannot be interrupted: a plain handler stops at its next progress().
                if task is None or inspect.iscoroutinefunction(task.handler):
                    running.cancel()
        elif isinstance(msg, protocol.Drop):
            self.send(protocol.Dropped([s.job_id for q in self.queued.values() for s in q]))
            self.queued.clear()
        else:
            log.error("unknown message from the supervisor: %r", msg)

    # Jobs ---------------------------------------------------------------------------------

    def start(self, spec: protocol.JobSpec) -> None:
        self.active[spec.job_type] = self.active.get(spec.job_type, 0) + 1
        job = self.loop.create_task(self.run_one(spec), name=f"job {spec.job_id}")
        self.specs[job] = spec
        self.running[spec.job_id] = job

    def ended(self, job_type: str) -> None:
        """A job of ``job_type`` ended: start the next one handed in advance, if any."""
        self.active[job_type] -= 1
        waiting = self.queued.get(job_type)
        if waiting:
            self.start(waiting.popleft())

    async def run_one(self, spec: protocol.JobSpec) -> None:
        job_id = spec.job_id
        task = self.tasks.get(spec.job_type)

        def send_progress(state: dict[str, Any]) -> None:
            _check_storable(state, "progress")
            if threading.get_ident() == self.loop_thread:
                self.report(job_id, state)
            else:  # a plain handler, in its thread
                self.loop.call_soon_threadsafe(self.report, job_id, state)

        throttle = ProgressThrottle(send_progress)
        start = time.perf_counter()
        try:
            if task is None:
                raise NonRetryable(f"this worker has no task {spec.job_type!r}")
            ctx = JobContext(job_id, spec.job_type, task.validate(spec.params), spec.attempt,
                             throttle, self.cancelled, spec.dependencies)
            if inspect.iscoroutinefunction(task.handler):
                result = await task.handler(ctx)
            else:
                result = await self.loop.run_in_executor(self.threads, task.handler, ctx)
            _check_storable(result, "result")
        except (JobCancelled, asyncio.CancelledError) as exc:
            if job_id in self.cancelled:
                self.progress.pop(job_id, None)
                self.send(protocol.Cancelled(job_id, time.perf_counter() - start))
            else:  # a CancelledError of the handler's own making
                self.fail(spec, task, exc, start, throttle)
        except Exception as exc:  # noqa: BLE001 - any handler error ends the attempt, recorded
            self.fail(spec, task, exc, start, throttle)
        else:
            self.outbox.append(Completion(spec.fence(), result, self.last_progress(spec, throttle),
                                          time.perf_counter() - start))
            self.flush_soon()
        finally:
            self.cancelled.discard(job_id)
            job = self.running.pop(job_id, None)
            if job is not None:
                self.specs.pop(job, None)
            self.ended(spec.job_type)

    def fail(self, spec: protocol.JobSpec, task: Task | None, exc: BaseException,
             start: float, throttle: ProgressThrottle) -> None:
        retryable = (task is not None and not isinstance(exc, BadOutput | InvalidParams)
                     and task.retryable(exc))
        delay = task.delay_before_retry(spec.attempt) if task else 0.0
        error = {"error": type(exc).__name__, "message": _clean(str(exc))}
        progress = self.last_progress(spec, throttle)
        self.flush()  # earlier jobs' results first, so the log reads in order
        self.send(Failure(spec.fence(), error, retryable, delay, traceback.format_exc(),
                          time.perf_counter() - start, progress))

    def last_progress(self, spec: protocol.JobSpec,
                      throttle: ProgressThrottle) -> dict[str, Any] | None:
        """The progress to write with a job's outcome: its latest not sent yet, if any."""
        buffered = self.progress.pop(spec.job_id, None)
        unsent = throttle.unsent()
        return unsent if unsent is not None else buffered

    def report(self, job_id: UUID, state: dict[str, Any]) -> None:
        if job_id in self.running:
            self.progress[job_id] = state
            self.flush_soon()

    def flush_soon(self) -> None:
        """Flush after the jobs due on this turn of the loop (a wave of them finishing at once
        goes in one message), and at most every FLUSH_INTERVAL."""
        if self.flush_handle is None:
            wait = self.last_flush + FLUSH_INTERVAL - time.monotonic()
            self.flush_handle = (self.loop.call_later(wait, self.flush) if wait > 0
                                 else self.loop.call_soon(self.flush))

    def flush(self) -> None:
        self.last_flush = time.monotonic()
        if self.flush_handle is not None:
            self.flush_handle.cancel()
            self.flush_handle = None
        if self.progress:
            updates = [protocol.Progress(i, s) for i, s in self.progress.items()]
            self.progress.clear()
            self.send(protocol.ProgressMany(updates))
        if self.outbox:
            batch, self.outbox = self.outbox, []
            self.send(protocol.Done(batch))

    # Blocking the loop ----------------------------------------------------------------------

    def beat(self) -> None:
        """Runs on the loop every threshold/2: a late beat means a handler blocked the loop."""
        now = time.monotonic()
        late = now - self.beat_at
        if late >= self.block_threshold:
            spec = self.blocker
            what = (f"job {spec.job_id} ({spec.job_type}, attempt {spec.attempt})"
                    if spec is not None else "something other than a job")
            log.warning("%s blocked the event loop for %.3fs (threshold %.3fs) while %d other "
                        "job(s) of process %s waited: await instead, or declare the task "
                        "with a plain def", what, late, self.block_threshold,
                        max(0, len(self.running) - (spec is not None)), os.getpid())
        self.blocker, self.seen, self.warned = None, False, False
        self.beat_at = now + self.block_threshold / 2
        self.loop.call_at(self.loop.time() + self.block_threshold / 2, self.beat)

    def watch(self) -> None:
        """A thread: while the beat is late, note which task holds the loop; say so at once
        if it goes on (a CPU loop in an async handler may never end)."""
        interval = max(0.005, self.block_threshold / 4)
        long = max(1.0, 10 * self.block_threshold)
        while True:
            time.sleep(interval)
            late = time.monotonic() - self.beat_at
            # The first look in a late beat: later ones may see the jobs that ran after it.
            if late > interval and not self.seen:
                task = asyncio.current_task(self.loop)
                self.blocker = self.specs.get(task) if task is not None else None
                self.seen = True
            if late > long and self.seen and not self.warned:
                self.warned = True
                spec = self.blocker
                log.warning("%s has blocked the event loop for %.1fs so far; the other jobs of "
                            "process %s wait", f"job {spec.job_id} ({spec.job_type}, attempt "
                            f"{spec.attempt})" if spec else "something other than a job",
                            late, os.getpid())


async def serve(child: IoChild) -> None:
    child.send(protocol.Hello(os.getpid(), sorted(child.tasks)))
    child.beat_at = time.monotonic()
    child.beat()
    threading.Thread(target=child.read_loop, name="supervisor-reader", daemon=True).start()
    threading.Thread(target=child.watch, name="loop-watchdog", daemon=True).start()
    await asyncio.Event().wait()  # the reader exits the process when the supervisor is gone


def main(argv: list[str]) -> int:
    fd, parent_pid, log_level, threshold = int(argv[0]), int(argv[1]), argv[2], float(argv[3])
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    config_mod.setup_logging(log_level)
    cfg = config_mod.load()
    loop = asyncio.new_event_loop()
    child = IoChild(Connection(fd), load_tasks(cfg.task_modules), threshold, loop)
    loop.run_until_complete(serve(child))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
