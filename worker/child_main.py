"""A worker child process: runs the jobs its supervisor hands it, one at a time.

Started by the supervisor (worker/child_handle.py) as
``python -m bgjobs.worker.child_main FD PARENT_PID``; FD is its end of a socket pair carrying
pickled messages (see worker/protocol.py). The child never touches the
database: the supervisor makes every write, fenced, in batches. A reader thread takes messages
while the handler runs, so a cancellation reaches even a handler busy in a CPU loop.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import inspect
import logging
import math
import os
import signal
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any
from uuid import UUID

from bgjobs.core import config as config_mod
from bgjobs.core.errors import BgjobsError
from bgjobs.core.jobs import Completion, Failure, unstorable
from bgjobs.tasks.context import JobCancelled, JobContext, ProgressThrottle
from bgjobs.tasks.registry import InvalidParams, NonRetryable, Task, load_tasks
from bgjobs.worker import protocol

log = logging.getLogger(__name__)

#: Finished jobs are reported in batches, at least this often (seconds) while busy.
FLUSH_INTERVAL = 0.01
PR_SET_PDEATHSIG = 1


class Child:
    def __init__(self, conn: Connection, tasks: dict[str, Task]) -> None:
        self.conn = conn
        self.tasks = tasks
        self.queue: collections.deque[protocol.JobSpec] = collections.deque()
        self.cond = threading.Condition()
        self.cancelled: set[UUID] = set()
        self.send_lock = threading.Lock()
        self.outbox: list[Completion] = []
        self.last_flush = time.monotonic()

    def send(self, msg: protocol.FromChild) -> None:
        with self.send_lock:
            self.conn.send(msg)

    def read_loop(self) -> None:
        """Take the supervisor's messages; exit at once when it is gone (it is the only writer)."""
        try:
            while True:
                self.handle(self.conn.recv())
        except (EOFError, OSError):
            os._exit(0)

    def handle(self, msg: protocol.ToChild) -> None:
        if isinstance(msg, protocol.Jobs):
            with self.cond:
                self.queue.extend(msg.specs)
                self.cond.notify()
        elif isinstance(msg, protocol.Cancel):
            self.cancelled.add(msg.job_id)
            with self.cond:
                queued = [j for j in self.queue if j.job_id == msg.job_id]
                for job in queued:
                    self.queue.remove(job)
            if queued:  # never started: nothing to stop, just say so
                self.cancelled.discard(msg.job_id)
                self.send(protocol.Cancelled(msg.job_id, None))
        elif isinstance(msg, protocol.Drop):
            with self.cond:
                ids = [j.job_id for j in self.queue]
                self.queue.clear()
            self.send(protocol.Dropped(ids))
        else:
            log.error("unknown message from the supervisor: %r", msg)

    def run(self) -> None:
        while True:
            with self.cond:
                job = self.queue.popleft() if self.queue else None
            if job is None:
                self.flush()
                with self.cond:
                    while not self.queue:
                        self.cond.wait()
                continue
            self.run_one(job)
            if time.monotonic() - self.last_flush >= FLUSH_INTERVAL:
                self.flush()
            if len(self.cancelled) > 100:  # cancels that came after their job finished
                with self.cond:
                    self.cancelled &= {j.job_id for j in self.queue}

    def flush(self) -> None:
        self.last_flush = time.monotonic()
        if self.outbox:
            batch, self.outbox = self.outbox, []
            self.send(protocol.Done(batch))

    def run_one(self, job: protocol.JobSpec) -> None:
        job_id = job.job_id
        if job_id in self.cancelled:
            self.cancelled.discard(job_id)
            self.send(protocol.Cancelled(job_id, None))
            return
        task = self.tasks.get(job.job_type)

        def send_progress(state: dict[str, Any]) -> None:
            _check_storable(state, "progress")
            self.send(protocol.Progress(job_id, state))

        throttle = ProgressThrottle(send_progress)
        start = time.perf_counter()
        try:
            if task is None:
                raise NonRetryable(f"this worker has no task {job.job_type!r}")
            # Rows enqueued with plain SQL skipped the API's check: fill defaults, reject junk.
            ctx = JobContext(job_id, job.job_type, task.validate(job.params), job.attempt,
                             throttle, self.cancelled, job.dependencies)
            result = task.handler(ctx)
            if inspect.iscoroutine(result):  # an async task run a process per job
                result = asyncio.run(result)
            _check_storable(result, "result")
        except JobCancelled:
            self.send(protocol.Cancelled(job_id, time.perf_counter() - start))
        except Exception as exc:  # noqa: BLE001 - any handler error ends the attempt, recorded
            retryable = (task is not None and not isinstance(exc, BadOutput | InvalidParams)
                         and task.retryable(exc))
            delay = task.delay_before_retry(job.attempt) if task else 0.0
            error = {"error": type(exc).__name__, "message": _clean(str(exc))}
            self.flush()  # earlier jobs' results first, so the log reads in order
            self.send(Failure(job.fence(), error, retryable, delay, traceback.format_exc(),
                              time.perf_counter() - start, throttle.unsent()))
        else:
            self.outbox.append(Completion(job.fence(), result, throttle.unsent(),
                                          time.perf_counter() - start))
        finally:
            self.cancelled.discard(job_id)


class BadOutput(BgjobsError, TypeError):
    """A handler returned or reported something Postgres cannot store as JSON."""


def _flat_storable(value: Any) -> bool:
    """A dict of plain scalars Postgres can store (the usual progress report), told without
    encoding it: an IO process checks hundreds of reports a second."""
    if type(value) is not dict:
        return False
    for key, item in value.items():
        kind = type(item)
        if type(key) is not str or "\x00" in key:
            return False
        if kind is str:
            if "\x00" in item:
                return False
        elif kind is float:
            if not math.isfinite(item):
                return False
        elif not (kind is int or kind is bool or item is None):
            return False
    return True


def _check_storable(value: Any, what: str) -> None:
    # psycopg would happily send NaN or \u0000, which jsonb rejects for the whole batch.
    if value is None or _flat_storable(value):
        return
    problem = unstorable(value)
    if problem:
        raise BadOutput(f"{what} {problem}")


def _clean(message: str) -> str:
    return message.replace("\x00", "")[:2000]


def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL us when the supervisor dies, even mid-CPU-loop."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %s", ctypes.get_errno())
    if os.getppid() != parent_pid:  # the supervisor died before prctl took effect
        os._exit(1)


def main(argv: list[str]) -> int:
    fd, parent_pid, log_level = int(argv[0]), int(argv[1]), argv[2]
    _die_with_parent(parent_pid)
    # The supervisor decides when children stop; a Ctrl-C to the process group must not.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    config_mod.setup_logging(log_level)
    cfg = config_mod.load()
    if cfg.worker_nice:
        # Jobs are CPU-bound Python: without this, a machine full of them answered progress
        # checks at p99 10.6 ms instead of 7.7 ms (issue 12; docs/benchmarks.md).
        os.nice(cfg.worker_nice)
    conn = Connection(fd)
    child = Child(conn, load_tasks(cfg.task_modules))
    child.send(protocol.Hello(os.getpid(), sorted(child.tasks)))
    threading.Thread(target=child.read_loop, name="supervisor-reader", daemon=True).start()
    child.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
