"""The supervisor: one per machine. It listens, claims, hands jobs to its children, writes.

One thread, one loop: wait (selector over the LISTEN socket, the children's sockets and a
signal pipe, with a timeout to the next timer), then act: read children, flush buffered writes
in batches, heartbeat, reap, enforce cancellation and shutdown deadlines, claim for idle
children. Only the supervisor talks to Postgres: one LISTEN connection, one write connection.
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import signal
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from server.db import DatabaseUnavailable
from server.store import Attempt, Job, Store
from worker import protocol
from worker.children import ChildProcess
from worker.connection import OneConnection
from worker.listener import NEW, Listener
from worker.outbox import Outbox, Running, elapsed

log = logging.getLogger(__name__)

#: Hand a child about this many seconds of work at once (many no-op jobs, one slow job).
BATCH_SECONDS = 0.05
MAX_BACKOFF = 10.0


@dataclass(frozen=True)
class Settings:
    concurrency: int
    types: tuple[str, ...] | None = None  # None: every type the children know
    lease: int = 30
    poll_interval: float = 5.0
    cancel_grace: float = 10.0
    shutdown_grace: float = 30.0
    max_batch: int = 100

    @property
    def heartbeat_interval(self) -> float:
        return self.lease / 3

    @property
    def reap_interval(self) -> float:
        return max(0.5, min(5.0, self.lease / 2))


class Backoff:
    """Retry timing for one connection, logging once when it goes down and once when back."""

    def __init__(self, what: str) -> None:
        self.what = what  # e.g. "LISTEN connection": "... lost: why" / "... restored after 2.0s"
        self.down_since: float | None = None
        self.delay = 0.0
        self.retry_at = 0.0

    def ready(self, now: float) -> bool:
        return now >= self.retry_at

    def failed(self, exc: BaseException, now: float) -> None:
        if self.down_since is None:
            self.down_since = now
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            log.warning("%s lost: %s; reconnecting with backoff", self.what, first)
        self.delay = min(MAX_BACKOFF, self.delay * 2 or 0.25)
        self.retry_at = now + self.delay

    def ok(self, now: float) -> None:
        if self.down_since is not None:
            log.info("%s restored after %.1fs", self.what, now - self.down_since)
        self.down_since, self.delay, self.retry_at = None, 0.0, 0.0


class Supervisor:
    def __init__(self, url: str, settings: Settings) -> None:
        self.settings = settings
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        self.db = OneConnection(url)
        self.store = Store(self.db)  # type: ignore[arg-type] - the pool API the store uses
        self.listener = Listener(url)
        self.outbox = Outbox(self.store)
        self.selector = selectors.DefaultSelector()
        self.children: dict[int, ChildProcess] = {}
        self.running: dict[str, Running] = {}
        self.types: tuple[str, ...] = settings.types or ()
        self.db_state = Backoff("database connection")
        self.listen_state = Backoff("LISTEN connection")
        self.listening = False
        self.listen_fd = -1
        now = time.monotonic()
        self.wake = True  # claim at start: jobs may be waiting
        self.more = False
        self.next_poll = now + settings.poll_interval
        self.next_heartbeat = now + settings.heartbeat_interval
        self.next_reap = now
        self.next_due: float | None = None
        self.respawn_at: dict[int, float] = {}
        self.avg_duration = 1.0
        self.stopping = False
        self.force = False
        self.stop_deadline = 0.0
        self.signals = 0

    # The loop ----------------------------------------------------------------------------------

    def run(self) -> int:
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        old_fd = signal.set_wakeup_fd(wake_w.fileno())
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        self.selector.register(wake_r, selectors.EVENT_READ, lambda: _drain_socket(wake_r))
        log.info("worker %s starting %d processes (lease %ss, poll %ss)", self.worker_id,
                 self.settings.concurrency, self.settings.lease, self.settings.poll_interval)
        try:
            for slot in range(self.settings.concurrency):
                self._spawn(slot)
            while not self._finished():
                self._tick()
        finally:
            for child in list(self.children.values()):
                child.close()
            self.listener.close()
            self.db.close()
            self.selector.close()
            signal.set_wakeup_fd(old_fd)
            for s, handler in old.items():
                signal.signal(s, handler)
            wake_r.close()
            wake_w.close()
        log.info("worker %s stopped", self.worker_id)
        return 0

    def _tick(self) -> None:
        now = time.monotonic()
        for key, _ in self.selector.select(max(0.0, self._next_wakeup(now) - now)):
            key.data()
        now = time.monotonic()
        self._respawn(now)
        if not self.listening and self.listen_state.ready(now):
            self._listen(now)
        self._cancel_deadlines(now)
        if self.stopping:
            self._shutdown_step(now)
        if self.db_state.ready(now):
            try:
                self._database_work(now)
                self.db_state.ok(now)
            except DatabaseUnavailable as exc:
                self.db_state.failed(exc, now)

    def _next_wakeup(self, now: float) -> float:
        if self.signals and not self.stopping:
            return now
        times = [self.next_poll, self.next_reap, now + self.settings.poll_interval]
        if self.running:
            times.append(self.next_heartbeat)
        if self.next_due is not None:
            times.append(self.next_due)
        times += [r.cancel_deadline for r in self.running.values() if r.cancel_deadline]
        times += list(self.respawn_at.values())
        if self.stopping:
            times.append(self.stop_deadline)
        if not self.listening:
            times.append(self.listen_state.retry_at)
        if self.outbox or ((self.wake or self.more) and self.types and self._capacity()):
            times.append(self.db_state.retry_at)
        return max(now, min(times)) if times else now

    def _finished(self) -> bool:
        if not self.stopping:
            return False
        if self.running:
            return False
        # Unwritable results after the deadline are left to the reaper.
        return not self.outbox or self.force or time.monotonic() > self.stop_deadline + 5

    def _database_work(self, now: float) -> None:
        lost = self.outbox.flush()
        self._lost(lost, "its row changed")
        if self.running and now >= self.next_heartbeat:
            self.next_heartbeat = now + self.settings.heartbeat_interval
            sent = list(self.running.values())
            owned = self.store.heartbeat([r.attempt for r in sent])
            self._lost({r.id for r in sent if r.attempt.job_id not in owned}, "heartbeat")
        if now >= self.next_reap:
            self.next_reap = now + self.settings.reap_interval
            for row in self.store.reap_stale():
                log.warning("reaped job %s (%s) of a lost worker: now %s after %s attempt(s)",
                            row["id"], row["job_type"], row["status"], row["attempts"])
        if now >= self.next_poll:
            self.next_poll = now + self.settings.poll_interval
            self.wake = True
        if self.next_due is not None and now >= self.next_due:
            self.next_due, self.wake = None, True
        if not self.stopping and (self.wake or self.more):
            self._claim()

    # Claiming -------------------------------------------------------------------------------

    def _batch(self) -> int:
        return max(1, min(self.settings.max_batch, int(BATCH_SECONDS / self.avg_duration)))

    def _capacity(self) -> dict[ChildProcess, int]:
        batch = self._batch()
        return {c: batch - len(c.jobs) for c in self.children.values()
                if c.ready and len(c.jobs) <= batch // 2}

    def _claim(self) -> None:
        capacity = self._capacity()
        limit = sum(capacity.values())
        if not limit or not self.types:
            return
        jobs = self.store.claim(self.worker_id, self.types, limit=limit,
                                lease_seconds=self.settings.lease)
        self.wake = False
        self.more = len(jobs) == limit
        if not self.more:
            self._schedule_next_due()
        now = time.monotonic()
        if jobs and not self.running:
            self.next_heartbeat = now + self.settings.heartbeat_interval
        handout: dict[ChildProcess, list[protocol.JobSpec]] = {c: [] for c in capacity}
        order = list(capacity)
        i = 0
        for job in jobs:
            while capacity[order[i % len(order)]] <= 0:
                i += 1
            child = order[i % len(order)]
            capacity[child] -= 1
            i += 1
            self._hand(child, job, now, handout[child])
        for child, specs in handout.items():
            if specs:
                child.send((protocol.JOBS, specs))

    def _hand(self, child: ChildProcess, job: Job, now: float,
              specs: list[protocol.JobSpec]) -> None:
        job_id = str(job.id)
        r = Running(job_id, Attempt(job.id, self.worker_id, job.attempts), job.job_type,
                    job.max_attempts, job.version, child, now)
        self.running[job_id] = r
        child.jobs[job_id] = None
        specs.append((job_id, job.job_type, job.params, job.attempts))
        log.info("claimed %s for process %s", r.describe(), child.pid)

    def _schedule_next_due(self) -> None:
        due = self.store.next_run_after(self.types)
        self.next_due = None
        if due is not None:
            wait = (due - datetime.now(UTC)).total_seconds()
            if wait > 0:  # past-due rows are being claimed by someone else right now
                self.next_due = time.monotonic() + min(wait, self.settings.poll_interval)

    # Children -------------------------------------------------------------------------------

    def _spawn(self, slot: int) -> None:
        child = ChildProcess(slot)
        self.children[slot] = child
        self.selector.register(child.conn, selectors.EVENT_READ,
                               lambda: self._on_child(child))

    def _respawn(self, now: float) -> None:
        for slot, at in list(self.respawn_at.items()):
            if now >= at and not self.stopping:
                del self.respawn_at[slot]
                self._spawn(slot)

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
            self._child_died(child)

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
                if progress is not None:
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
            if not self.settings.types:
                self.types = tuple(msg[2])
            log.debug("process %s ready with tasks %s", msg[1], ", ".join(msg[2]))
            if all(c.ready for c in self.children.values()):
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

    def _child_died(self, child: ChildProcess) -> None:
        self._drop_child(child)
        code = child.popen.returncode
        log.error("worker process %s exited unexpectedly (code %s)", child.pid, code)
        for n, job_id in enumerate(list(child.jobs)):
            r = self._finish(child, job_id, None)
            if r is None or r.cancel_deadline is not None:
                continue
            if n == 0:
                error = {"error": "WorkerCrashed",
                         "message": f"the worker process running it exited with code {code}"}
                delay = 2.0 * 2 ** (r.attempt.attempt - 1)
                self.outbox.failed.append((r, error, True, delay, "", elapsed(r)))
            else:
                self.outbox.released.append((r, "its worker process crashed before it started"))
        if not self.stopping:
            # A child that dies before it is even ready would die again: slow down.
            self.respawn_at[child.slot] = time.monotonic() + (0.1 if child.ready else 2.0)

    def _drop_child(self, child: ChildProcess) -> None:
        self.selector.unregister(child.conn)
        if self.children.get(child.slot) is child:
            del self.children[child.slot]
        child.kill()

    def _kill(self, child: ChildProcess, why: str) -> None:
        """Kill a child on purpose; its unstarted jobs go back to pending."""
        self._drop_child(child)
        for job_id in list(child.jobs):
            r = self._finish(child, job_id, None)
            if r is not None and r.cancel_deadline is None:
                self.outbox.released.append((r, why))
        if not self.stopping:
            self._spawn(child.slot)

    # Cancellation --------------------------------------------------------------------------

    def _lost(self, ids: set[str], how: str) -> None:
        now = time.monotonic()
        for job_id in ids:
            r = self.running.get(job_id)
            if r is None or r.cancel_deadline is not None:
                continue
            r.cancel_deadline = now + self.settings.cancel_grace
            log.info("%s was cancelled or taken back (seen by %s): stopping its handler",
                     r.describe(), how)
            r.child.send((protocol.CANCEL, job_id))

    def _cancel_deadlines(self, now: float) -> None:
        for r in list(self.running.values()):
            if r.cancel_deadline is not None and now >= r.cancel_deadline and r.id in self.running:
                log.warning("%s ignored its cancellation for %.0fs: killing process %s and "
                            "starting a new one", r.describe(), self.settings.cancel_grace,
                            r.child.pid)
                self._finish(r.child, r.id, None)
                self._kill(r.child, "its process was killed to stop a cancelled job")

    def _on_notify(self) -> None:
        try:
            items = self.listener.drain()
        except DatabaseUnavailable as exc:
            self._listener_lost(exc)
            return
        for channel, payload in items:
            if channel == NEW:
                if payload in self.types:
                    self.wake = True
                continue
            # Cheap checks first: most payloads are about jobs running elsewhere or our own.
            job_id = payload[9:45] if payload.startswith('{"id" : "') else None
            r = self.running.get(job_id) if job_id else None
            if r is None or '"status" : "running"' in payload:
                continue
            try:
                data = json.loads(payload)
            except ValueError:
                log.warning("dropped an unreadable notification: %.200s", payload)
                continue
            if "status" not in data:
                self.outbox.check[r.id] = r  # id-only payload: re-read the row
            elif isinstance(data.get("version"), int) and data["version"] > r.version:
                # Older payloads (the insert's, queued behind our claim) say nothing new.
                self._lost({r.id}, "notification")

    # Connections -------------------------------------------------------------------------

    def _listen(self, now: float) -> None:
        try:
            self.listener.connect()
        except DatabaseUnavailable as exc:
            self.listen_state.failed(exc, now)
            return
        self.listen_fd = self.listener.fileno()  # psycopg cannot tell it once the link is lost
        self.selector.register(self.listen_fd, selectors.EVENT_READ, self._on_notify)
        self.listening = True
        self.listen_state.ok(now)
        # Notifications sent while we were not listening are lost: re-read the table.
        self.wake = True
        self.next_heartbeat = now
        log.info("listening for jobs (%s)", ", ".join(self.settings.types or ("all types",)))

    def _listener_lost(self, exc: BaseException) -> None:
        self.selector.unregister(self.listen_fd)
        self.listener.close()
        self.listening = False
        self.listen_state.failed(exc, time.monotonic())

    # Shutdown ----------------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.signals += 1
        if self.signals == 1:
            self.stopping = True
            self.stop_deadline = time.monotonic() + self.settings.shutdown_grace
            log.info("stopping: claiming no more jobs; waiting up to %ss for %d running job(s)",
                     self.settings.shutdown_grace, len(self.running))
            for child in self.children.values():
                child.send((protocol.DROP,))
        else:
            self.force = True
            log.info("second signal: stopping now")

    def _shutdown_step(self, now: float) -> None:
        if not (self.force or now >= self.stop_deadline):
            return
        for child in list(self.children.values()):
            if child.jobs:
                self._kill(child, "shutting down before it finished")


def _drain_socket(sock: socket.socket) -> None:
    try:
        while sock.recv(4096):
            pass
    except BlockingIOError:
        pass


