"""The supervisor: one per machine. It listens, claims, hands jobs to its children, writes.

One thread, one loop: wait (selector over the LISTEN socket, the children's sockets and a
signal pipe, with a timeout to the next timer), then act: flush buffered writes in batches,
heartbeat, reap, enforce cancellation and shutdown deadlines, claim for idle children. Only
the supervisor talks to Postgres: one LISTEN connection and one write connection per machine.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from bgjobs.core.errors import DatabaseUnavailable
from bgjobs.core.store import Store
from bgjobs.core.store_ops import Retention
from bgjobs.tasks import registry
from bgjobs.tasks.sync import sync_registry
from bgjobs.worker.backoff import Backoff
from bgjobs.worker.connection import OneConnection
from bgjobs.worker.fleet import Fleet
from bgjobs.worker.notifications import (
    APPLICATION_NAME,
    NEW,
    TYPED_APPLICATION_NAME,
    Note,
    NotificationListener,
    parse_taken_back,
)
from bgjobs.worker.outbox import Outbox
from bgjobs.worker.retention import Purger
from bgjobs.worker.scheduler import Scheduler
from bgjobs.worker.wakeups import Wakeups
from bgjobs.worker.writer import Writer

log = logging.getLogger(__name__)

#: Signals this close together are one stop request (see _on_signal).
SAME_REQUEST = 0.5


@dataclass(frozen=True)
class Settings:
    concurrency: int
    types: tuple[str, ...] | None = None  # None: every type the children know
    lease: int = 30
    poll_interval: float = 5.0
    cancel_grace: float = 10.0
    shutdown_grace: float = 30.0
    max_batch: int = 100
    log_level: str = "INFO"
    #: Time zone of schedules declared in code without one (BGJOBS_TIMEZONE).
    timezone: str = "UTC"
    keep: Retention = Retention()

    @property
    def heartbeat_interval(self) -> float:
        return self.lease / 3

    @property
    def reap_interval(self) -> float:
        return max(0.5, min(5.0, self.lease / 2))


class Supervisor:
    def __init__(self, url: str, settings: Settings) -> None:
        self.settings = settings
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        self.db = OneConnection(url, self.worker_id)
        self.store = Store(cast(Any, self.db))  # OneConnection has the pool API the store uses
        # A supervisor limited to some types is never chosen to claim for the others.
        self.listen_name = TYPED_APPLICATION_NAME if settings.types else APPLICATION_NAME
        self.listener = NotificationListener(url, self.listen_name)
        self.wakeups = Wakeups(claims_for_all=not settings.types)
        self.outbox = Outbox()
        self.writer = Writer(url, self.worker_id)
        self.selector = selectors.DefaultSelector()
        self.fleet = Fleet(self.selector, self.outbox, settings.concurrency,
                           settings.cancel_grace, settings.max_batch, settings.log_level)
        self.db_state = Backoff("database connection")
        self.write_state = Backoff("database connection for results")
        self.listen_state = Backoff("LISTEN connection")
        self.listening = False
        self.listen_fd = -1
        now = time.monotonic()
        self.wake = True  # claim at start: jobs may be waiting
        self.more = False  # the last claim was full: claim again as soon as there is room
        self.next_poll = now + settings.poll_interval
        self.next_heartbeat = now + settings.heartbeat_interval
        self.next_reap = now
        self.next_due: float | None = None
        self.stopping = False
        self.force = False
        self.stop_deadline = 0.0
        self.signals = 0
        self.first_signal = 0.0
        # Operations: declared limits and schedules, periodic jobs, retention, our heartbeat.
        self.synced = False
        self.limited: dict[str, float | None] = {}  # limited types -> starts per second
        self.scheduler = Scheduler(self.store)
        self.next_schedule = now
        self.purger = Purger(self.store, settings.keep)
        self.next_beat = now

    @property
    def types(self) -> tuple[str, ...]:
        return self.settings.types or self.fleet.task_names

    # The loop ----------------------------------------------------------------------------------

    def run(self) -> int:
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        old_fd = signal.set_wakeup_fd(wake_w.fileno())
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        self.selector.register(wake_r, selectors.EVENT_READ, lambda: _drain_socket(wake_r))
        self.selector.register(self.writer.wake_r, selectors.EVENT_READ, self._on_written)
        log.info("worker %s starting %d processes (lease %ss, poll %ss)", self.worker_id,
                 self.settings.concurrency, self.settings.lease, self.settings.poll_interval)
        try:
            for slot in range(self.settings.concurrency):
                self.fleet.spawn(slot)
            while not self._finished():
                self._tick()
        finally:
            self._forget_worker()
            self.fleet.close()
            self.writer.close()
            self.listener.close()
            self.db.close()
            self.selector.close()
            signal.set_wakeup_fd(old_fd)
            if not self.signals:
                for s, handler in old.items():
                    signal.signal(s, handler)
            # else keep counting: more Ctrl-C while the process exits must not kill it midway
            wake_r.close()
            wake_w.close()
        log.info("worker %s stopped", self.worker_id)
        return 0

    def _tick(self) -> None:
        now = time.monotonic()
        for key, _ in self.selector.select(max(0.0, self._next_wakeup(now) - now)):
            key.data()
        now = time.monotonic()
        self._handle_signals(now)
        self.fleet.respawn(now)
        if not self.listening and self.listen_state.ready(now):
            self._listen(now)
        self.fleet.enforce_cancel_grace(now)
        if self.stopping and (self.force or now >= self.stop_deadline):
            self.fleet.kill_busy()
        if self.fleet.running and now >= self.next_heartbeat:
            self.next_heartbeat = now + self.settings.heartbeat_interval
            # Written by the writer, after any progress already queued (see Outbox.heartbeat).
            self.outbox.heartbeat = list(self.fleet.running.values())
        if self.outbox and self.writer.in_flight is None and self.write_state.ready(now):
            self.writer.submit(self.outbox.take())
        if self.db_state.ready(now):
            try:
                self._database_work(now)
                self.db_state.ok(now)
            except DatabaseUnavailable as exc:
                self.db_state.failed(exc, now)
            except Exception as exc:
                # Not an outage (a query error, a bug): say so loudly, keep the machine's
                # running jobs alive, and try again after the backoff rather than dying.
                log.exception("claiming or reaping failed")
                self.db_state.failed(exc, now)

    def _next_wakeup(self, now: float) -> float:
        times = [self.next_poll, self.next_reap, now + self.settings.poll_interval,
                 self.next_schedule, self.next_beat, self.purger.next_at]
        if self.fleet.running:
            times.append(self.next_heartbeat)
        for t in (self.next_due, self.fleet.next_deadline()):
            if t is not None:
                times.append(t)
        if self.stopping:
            times.append(self.stop_deadline)
        if not self.listening:
            times.append(self.listen_state.retry_at)
        if self.outbox and self.writer.in_flight is None:
            times.append(self.write_state.retry_at)
        if (self.wake or self.more) and self._room():
            times.append(self.db_state.retry_at)
        return max(now, min(times))

    def _finished(self) -> bool:
        if not self.stopping or self.fleet.running:
            return False
        if self.writer.in_flight is not None:
            return False
        # Writes still failing well after the deadline are left to the reaper.
        return not self.outbox or self.force or time.monotonic() > self.stop_deadline + 5

    def _on_written(self) -> None:
        now = time.monotonic()
        for batch, lost, error in self.writer.results():
            self.fleet.lost(lost, "a fenced write or heartbeat")
            if error is None:
                self.write_state.ok(now)
                # A finished job of a limited type frees a slot that no notification announces.
                if self.limited:
                    finished = [o.running for o in batch.done] + [o.running for o in batch.failed]
                    self.wake |= any(r.job_type in self.limited for r in finished)
                continue
            self.outbox.put_back(batch)
            if not isinstance(error, DatabaseUnavailable):
                log.error("writing results failed; will retry", exc_info=error)
            self.write_state.failed(error, now)

    def _database_work(self, now: float) -> None:
        if not self.synced:
            sync_registry(self.store, registry.load_tasks(), self.settings.timezone)
            self.limited = self.store.limited_types()
            self.synced = True
        if now >= self.next_beat:
            self.next_beat = now + self.settings.heartbeat_interval
            self.store.worker_heartbeat(
                self.worker_id, socket.gethostname(), os.getpid(), self.settings.concurrency,
                len(self.fleet.running), self.types, self.settings.lease)
        if now >= self.next_schedule and not self.stopping:
            self.next_schedule = now + self.settings.poll_interval
            with _side_loop("periodic jobs"):
                soonest = self.scheduler.run(self.settings.types or tuple(registry.load_tasks()))
                if soonest is not None:
                    wait = (soonest - datetime.now(UTC)).total_seconds()
                    self.next_schedule = now + max(0.0, min(self.settings.poll_interval, wait))
        with _side_loop("retention"):
            self.purger.run(now)
        if now >= self.next_reap:
            self.next_reap = now + self.settings.reap_interval
            reaped, self.wakeups.peers = self.store.reap_and_list_listeners(
                self.listen_name, reaper=self.worker_id, running=list(self.fleet.running))
            for row in reaped:
                log.warning("reaped job %s (%s) of a lost worker: now %s after %s attempt(s)",
                            row["id"], row["job_type"], row["status"], row["attempts"])
        if now >= self.next_poll:
            self.next_poll = now + self.settings.poll_interval
            self.wake = self.wakeups.sweep = True
            self.limited = self.store.limited_types()  # a DBA may have changed them
        if self.next_due is not None and now >= self.next_due:
            self.next_due, self.wake = None, True
            self.wakeups.sweep = True
        if not self.stopping and (self.wake or self.more):
            self._claim(now)

    def _room(self) -> bool:
        """Whether a claim could take jobs now (free children, results not piling up)."""
        # Unwritten results are held back jobs: past a few batches' worth, let the writer catch
        # up first. That also keeps every statement (and the set of running jobs) small.
        backlog = len(self.outbox) + self.writer.backlog()
        limit = 2 * self.settings.concurrency * self.settings.max_batch
        return bool(self.types) and backlog < limit and bool(self.fleet.capacity())

    def _claim(self, now: float) -> None:
        if not self._room():
            # `wake` stays set: claim once there is room; meanwhile idle peers may take them.
            self._relay(self.wakeups.unclaimed, now)
            return
        capacity = self.fleet.capacity()
        limit = sum(capacity.values())
        jobs = self.store.claim_specs(self.worker_id, self.types, limit=limit,
                                      lease_seconds=self.settings.lease)
        self.wake = False
        full = len(jobs) == limit
        # Claim again at once only when many may be waiting (a bulk insert, a poll): a full
        # claim of the one job that fell to a one-process supervisor says nothing of others,
        # and the claim after it would be empty.
        self.more = full and self.wakeups.sweep
        self.wakeups.claimed(full)
        if not self.more:
            self._schedule_next_due()
            self._schedule_rate_refill(now)
        if jobs and not self.fleet.running:
            self.next_heartbeat = now + self.settings.heartbeat_interval
        if jobs:
            self.fleet.hand_out(jobs, capacity, self.worker_id)

    def _schedule_next_due(self) -> None:
        """Wake when the soonest not-yet-due job (a retry's backoff, a scheduled job) is due."""
        due = self.store.next_run_after(self.types)
        self.next_due = None
        if due is not None:
            wait = (due - datetime.now(UTC)).total_seconds()
            if wait > 0:  # past-due rows are being claimed by someone else right now
                self.next_due = time.monotonic() + min(wait, self.settings.poll_interval)

    def _schedule_rate_refill(self, now: float) -> None:
        """Rate-limited types earn a start every 1/rate s, unannounced: claim again by then."""
        rates = [r for t, r in self.limited.items() if r and t in self.types]
        if rates:
            at = now + min(self.settings.poll_interval, max(0.25, 1 / max(rates)))
            self.next_due = at if self.next_due is None else min(self.next_due, at)

    def _forget_worker(self) -> None:
        try:
            self.store.worker_stopped(self.worker_id)
        except Exception as exc:  # noqa: BLE001 - the row goes stale and the purger drops it
            log.warning("could not remove this worker from bgjobs_workers: %s", exc)

    def _relay(self, types: set[str], now: float) -> None:
        """Wake every idle supervisor for ``types`` (see worker/wakeups.py)."""
        relay = self.wakeups.relay(types, now)
        if relay:
            self.store.wake_workers(relay)

    # Notifications ------------------------------------------------------------------------

    def _on_notify(self) -> None:
        try:
            items = self.listener.drain()
        except DatabaseUnavailable as exc:
            self._listener_lost(exc)
            return
        for note in items:
            channel, payload, sender = Note(*note)
            if channel == NEW:
                if self.wakeups.wake(payload, sender, self.types, time.monotonic()):
                    self.wake = True
                continue
            taken = parse_taken_back(payload)
            r = self.fleet.running.get(taken["id"]) if taken else None
            # News of an older attempt (reaped from us, then claimed by us again) is not news.
            if r is not None and taken is not None and taken["attempt"] == r.attempt.attempt:
                self.fleet.lost({r.id}, "notification")
                if r.job_type in self.limited:
                    self.wake = True  # its slot is free now

    def _listen(self, now: float) -> None:
        try:
            self.listener.connect()
        except DatabaseUnavailable as exc:
            self.listen_state.failed(exc, now)
            return
        self.listen_fd = self.listener.fileno()  # psycopg cannot tell it once the link is lost
        self.wakeups.listen_pid = self.listener.backend_pid()
        self.next_reap = now  # learn the peers again, with our new backend among them
        self.selector.register(self.listen_fd, selectors.EVENT_READ, self._on_notify)
        self.listening = True
        self.listen_state.ok(now)
        # Notifications sent while we were not listening are lost: re-read the table.
        self.wake = self.wakeups.sweep = True
        self.next_heartbeat = now
        log.info("listening for jobs (%s)", ", ".join(self.settings.types or ("all types",)))

    def _listener_lost(self, exc: BaseException) -> None:
        self.selector.unregister(self.listen_fd)
        self.listener.close()
        self.listening = False
        self.listen_state.failed(exc, time.monotonic())

    # Shutdown ----------------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: Any) -> None:
        # Only count: the loop acts on it (sending or logging here could interleave with the
        # very send or log call the signal interrupted). Ctrl-C under `bgjobs run` brings a
        # SIGINT from the terminal and a SIGTERM from `bgjobs run` at once: one request.
        now = time.monotonic()
        if self.signals == 0 or now - self.first_signal >= SAME_REQUEST:
            self.signals += 1
        self.first_signal = self.first_signal or now

    def _handle_signals(self, now: float) -> None:
        if self.signals and not self.stopping:
            self.stopping = True
            self.stop_deadline = now + self.settings.shutdown_grace
            log.info("stopping: claiming no more jobs; waiting up to %ss for %d running job(s)",
                     self.settings.shutdown_grace, len(self.fleet.running))
            self.fleet.drop_unstarted()
        if self.signals > 1 and not self.force:
            self.force = True
            log.info("second signal: stopping now, handing running jobs back")


@contextmanager
def _side_loop(name: str) -> Iterator[None]:
    """A side job's bug is logged and retried later; it must not stop the claims."""
    try:
        yield
    except DatabaseUnavailable:
        raise
    except Exception:
        log.exception("%s failed; retrying later", name)


def _drain_socket(sock: socket.socket) -> None:
    try:
        while sock.recv(4096):
            pass
    except BlockingIOError:
        pass
