"""The supervisor: one per machine. It listens, claims, hands jobs to its children, writes.

One thread, one loop: wait (selector over the LISTEN socket, the children's sockets and a
signal pipe, with a timeout to the soonest due duty or deadline), then act: enforce
cancellation and shutdown deadlines, flush buffered writes in batches, and run each duty that
is due (worker/duties/: registry sync, job heartbeats, the worker's own row, schedules,
retention, reaping, claiming). Only the supervisor talks to Postgres: one LISTEN connection
and one write connection per machine.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import socket
import time
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from bgjobs.core.channels import (
    EVERYONE,
    NEW,
    WORKER_LISTEN,
    WORKER_LISTEN_TYPED,
    parse_taken_back,
)
from bgjobs.core.errors import DatabaseUnavailable, NoSession
from bgjobs.core.store import Store
from bgjobs.core.store_ops import Retention
from bgjobs.tasks import registry
from bgjobs.worker.backoff import Backoff
from bgjobs.worker.connection import OneConnection
from bgjobs.worker.duties import Duty, run_due
from bgjobs.worker.duties.claiming import Claimer
from bgjobs.worker.duties.lease import LeaseHeartbeats
from bgjobs.worker.duties.reaping import Reaper
from bgjobs.worker.duties.registry_sync import RegistrySync
from bgjobs.worker.duties.retention import INTERVAL as PURGE_INTERVAL
from bgjobs.worker.duties.retention import Purger
from bgjobs.worker.duties.schedules import Schedules
from bgjobs.worker.duties.worker_beat import WorkerBeat
from bgjobs.worker.fleet import Fleet
from bgjobs.worker.notifications import Note, NotificationListener
from bgjobs.worker.outbox import Outbox
from bgjobs.worker.wakeups import Wakeups
from bgjobs.worker.writer import Writer

log = logging.getLogger(__name__)

#: Signals this close together are one stop request (see _on_signal).
SAME_REQUEST = 0.5
#: After the shutdown deadline, how long writes that fail (an outage) are retried before the
#: supervisor exits and leaves its jobs to a reaper.
GIVE_UP_WRITES = 5.0
#: While stopping, failing writes are retried at least this often (seconds): the usual
#: backoff (up to 10 s) could skip the whole GIVE_UP_WRITES window.
STOPPING_RETRY = 0.5


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
    #: Seconds between looks for finished jobs past their retention (BGJOBS_PURGE_INTERVAL).
    purge_interval: float = PURGE_INTERVAL
    #: IO processes for the concurrent types (None: one if there are such types, else none).
    io_processes: int | None = None
    #: A job that holds an IO process's event loop this long is logged (seconds).
    block_threshold: float = 0.1

    def io_types(self) -> dict[str, int]:
        """The concurrent types this worker runs (type -> jobs per IO process), if any."""
        tasks = registry.load_tasks()
        return {t.name: n for t in tasks.values()
                if (n := t.io_concurrency) is not None and (not self.types or t.name in self.types)}

    @property
    def heartbeat_interval(self) -> float:
        return self.lease / 3

    @property
    def reap_interval(self) -> float:
        return max(0.5, min(5.0, self.lease / 2))


class Supervisor:
    def __init__(self, url: str, settings: Settings, listen_url: str | None = None) -> None:
        """``url`` for claims and writes (a pooler in transaction mode will do), ``listen_url``
        for the LISTEN connection, which needs a session (default: ``url``)."""
        self.settings = settings
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        self.db = OneConnection(url)
        self.store = Store(self.db)
        # A supervisor limited to some types is never chosen to claim for the others.
        self.listen_name = WORKER_LISTEN_TYPED if settings.types else WORKER_LISTEN
        self.listener = NotificationListener(listen_url or url, self.listen_name)
        self.wakeups = Wakeups(claims_for_all=not settings.types)
        self.outbox = Outbox()
        self.writer = Writer(url)
        self.selector = selectors.DefaultSelector()
        # Strictly opt-in: with no concurrent type there is no IO process, and one claim.
        io_types = settings.io_types() if settings.io_processes != 0 else {}
        io_processes = (1 if settings.io_processes is None else settings.io_processes) \
            if io_types else 0
        ours = settings.types or tuple(registry.load_tasks())
        procs = settings.concurrency if set(ours) - set(io_types) else 0
        self.fleet = Fleet(self.selector, self.outbox, procs,
                           settings.cancel_grace, settings.max_batch, settings.log_level,
                           io_types, io_processes, settings.block_threshold)
        io_room = 2 * io_processes * sum(io_types.values())
        self.db_state = Backoff("database connection")
        self.write_state = Backoff("database connection for results")
        self.listen_state = Backoff("LISTEN connection")
        self.listening = False
        self.listen_fd = -1
        self.stopping = False
        self.force = False
        self.stop_deadline = 0.0
        self.signals = 0
        self.first_signal = 0.0
        # The duties, each in worker/duties/: the loop asks each one when it is due.
        self.lease = LeaseHeartbeats(self.fleet, self.outbox, settings.heartbeat_interval)
        self.registry_sync = RegistrySync(self.store, settings.timezone, settings.poll_interval)
        self.worker_beat = WorkerBeat(self.store, self.worker_id, self.fleet,
                                      lambda: self.types, settings.lease,
                                      settings.heartbeat_interval)
        self.schedules = Schedules(
            self.store, lambda: self.settings.types or tuple(registry.load_tasks()),
            settings.poll_interval)
        self.purger = Purger(self.store, settings.keep, settings.purge_interval)
        self.reaper = Reaper(self.store, self.worker_id, self.listen_name, self.wakeups,
                             settings.reap_interval, running=lambda: self.fleet.running)
        self.claimer = Claimer(
            self.store, self.fleet, self.wakeups, self.worker_id, lambda: self.types,
            lambda: len(self.outbox) + self.writer.backlog(),
            poll_interval=settings.poll_interval, lease=settings.lease,
            backlog_limit=2 * settings.concurrency * settings.max_batch + io_room)
        #: after the registry sync, in this order (the claim last: it sees the reaped jobs)
        self.database_duties: list[Duty] = [self.worker_beat, self.schedules, self.purger,
                                            self.reaper, self.claimer]

    @property
    def types(self) -> tuple[str, ...]:
        return self.settings.types or self.fleet.task_names

    @property
    def wake(self) -> bool:
        """A claim is wanted at the next chance (a notification, a freed slot, a reconnect)."""
        return self.claimer.wake

    @wake.setter
    def wake(self, value: bool) -> None:
        self.claimer.wake = value

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
                 self.fleet.size, self.settings.lease, self.settings.poll_interval)
        if self.fleet.io_types:
            log.info("%d of them IO processes, each running at once up to %s",
                     self.fleet.size - self.fleet.procs,
                     ", ".join(f"{n} {t}" for t, n in sorted(self.fleet.io_types.items())))
        try:
            for slot in range(self.fleet.size):
                self.fleet.spawn(slot)
            while not self._finished():
                self._tick()
        finally:
            self.worker_beat.forget()
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
        run_due([self.lease], now)
        if self.outbox and self.writer.in_flight is None and self.write_state.ready(now):
            self.writer.submit(self.outbox.take())
        if self.db_state.ready(now):
            answered = self.db.answered
            try:
                run_due([self.registry_sync], now)
                # Nothing runs before the declared types, limits and schedules are in Postgres.
                if self.registry_sync.done:
                    run_due(self.database_duties, now)
                # Back only once Postgres answered: a tick with no duty due proves nothing.
                if self.db.answered != answered:
                    self.db_state.ok(now)
            except DatabaseUnavailable as exc:
                self.db_state.failed(exc, now)

    def _next_wakeup(self, now: float) -> float:
        times = [now + self.settings.poll_interval]
        duties = [self.lease, self.registry_sync]
        if self.registry_sync.done:
            duties += self.database_duties
        for duty in duties:
            t = duty.wake_at(now)
            if t is not None:
                # A database duty waits for the connection's backoff too.
                times.append(max(t, self.db_state.retry_at) if duty.uses_database else t)
        deadline = self.fleet.next_deadline()
        if deadline is not None:
            times.append(deadline)
        if self.stopping:
            # Past the deadline the running jobs are given up: what is left is failing writes.
            times.append(self.stop_deadline if now < self.stop_deadline
                         else self.stop_deadline + GIVE_UP_WRITES)
        if not self.listening:
            times.append(self.listen_state.retry_at)
        if self.outbox and self.writer.in_flight is None:
            times.append(self.write_state.retry_at)
        return max(now, min(times))

    def _finished(self) -> bool:
        if not self.stopping or self.fleet.running:
            return False
        if self.writer.in_flight is not None:
            return False
        # Writes still failing well after the deadline are left to the reaper.
        return not self.outbox or self.force or \
            time.monotonic() >= self.stop_deadline + GIVE_UP_WRITES

    def _on_written(self) -> None:
        now = time.monotonic()
        for batch, lost, error in self.writer.results():
            self.fleet.lost(lost, "a fenced write or heartbeat")
            if error is None:
                self.write_state.ok(now)
                # A finished job of a limited type frees a slot that no notification announces.
                if self.claimer.limited:
                    finished = [r for r, _ in batch.done] + [r for r, _ in batch.failed]
                    if any(r.job_type in self.claimer.limited for r in finished):
                        self.wake = True
                continue
            self.outbox.put_back(batch)
            if not isinstance(error, DatabaseUnavailable):
                log.error("writing results failed; will retry", exc_info=error)
            self.write_state.failed(error, now)

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
                    self.claimer.woken(payload.removeprefix(EVERYONE),
                                       payload.startswith(EVERYONE))
                continue
            taken = parse_taken_back(payload)
            r = self.fleet.running.get(UUID(taken["id"])) if taken else None
            # News of an older attempt (reaped from us, then claimed by us again) is not news.
            if r is not None and taken is not None and taken["attempt"] == r.attempt.attempt:
                self.fleet.lost({r.id}, "notification")
                if r.job_type in self.claimer.limited:
                    self.wake = True  # its slot is free now

    def _listen(self, now: float) -> None:
        try:
            self.listener.connect()
        except (DatabaseUnavailable, NoSession) as exc:  # NoSession at start: worker/main.py
            self.listen_state.failed(exc, now)
            return
        self.listen_fd = self.listener.fileno()  # psycopg cannot tell it once the link is lost
        self.wakeups.listen_pid = self.listener.backend_pid()
        self.reaper.soon()  # learn the peers again, with our new backend among them
        self.selector.register(self.listen_fd, selectors.EVENT_READ, self._on_notify)
        self.listening = True
        self.listen_state.ok(now)
        # Notifications sent while we were not listening are lost: re-read the table.
        self.claimer.sweep()
        self.lease.soon()
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
            self.schedules.halt()
            self.claimer.halt()
            self.stop_deadline = now + self.settings.shutdown_grace
            self.write_state.cap(STOPPING_RETRY, now)
            log.info("stopping: claiming no more jobs; waiting up to %ss for %d running job(s)",
                     self.settings.shutdown_grace, len(self.fleet.running))
            self.fleet.drop_unstarted()
        if self.signals > 1 and not self.force:
            self.force = True
            log.info("second signal: stopping now, handing running jobs back")


def _drain_socket(sock: socket.socket) -> None:
    try:
        while sock.recv(4096):
            pass
    except BlockingIOError:
        pass
