"""One LISTEN connection per events process, fanned out in memory to the SSE streams.

The broadcaster holds a single autocommit connection (outside any pool) on
``background_jobs_progress`` and hands each change to the subscriptions that watch the job or
its owner. A subscription keeps only the latest state per job, so a slow reader costs one job
per watched job, never a backlog. When the connection drops it reconnects with backoff and
re-reads every watched job, so a restart of Postgres costs clients a pause, not a final state.

Versions only grow, except when the database itself goes back (a crash that lost commits, a
failover to an asynchronous replica, a restore). A state older than one already seen is then
checked against the table; if the table is behind what was seen, the row went back, and its
current state is sent anyway (``reset``): a stream never goes silent because of a version it
saw before.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, cast
from uuid import UUID

import psycopg

from bgjobs.core import channels
from bgjobs.core.channels import InsertedPayload, ProgressPayload
from bgjobs.core.errors import DatabaseUnavailable, NoSession, first_line
from bgjobs.core.jobs import FINISHED, Job
from bgjobs.core.queries import q
from bgjobs.server.events_db import EventsDb
from bgjobs.server.fanout import Lane

if TYPE_CHECKING:
    from collections.abc import Iterable

    from bgjobs.server.fanout import Fanout, Wire

log = logging.getLogger(__name__)

CHANNEL = channels.PROGRESS
#: Revoked tokens and ended sessions (008_sessions_and_job_types.sql): {"user_id": N}.
AUTH_CHANNEL = channels.AUTH
APPLICATION_NAME = channels.EVENTS_LISTEN
# With no notification for this long, the listener asks Postgres the time: it proves the
# connection alive (a half-open socket would otherwise wait for ever) and dates the resync.
PROBE_SECONDS = 20.0
# Margin for notifications still in flight when a probe succeeded and the connection then broke.
RESYNC_MARGIN = timedelta(seconds=PROBE_SECONDS * 2)
BACKOFF_MIN, BACKOFF_MAX = 0.2, 5.0
#: Most job states an all-jobs (admin) stream holds for a slow client; past it, news is dropped.
FIREHOSE_MAX_WAITING = 5000


@dataclasses.dataclass(frozen=True)
class Change:
    """A job's new state as its notification tells it: the all-jobs stream reads no rows."""

    id: UUID
    version: int
    user_id: int | None
    job_type: str
    status: str
    progress: dict[str, Any] | None

    def to_json(self) -> dict[str, Any]:
        return {"id": str(self.id), "type": self.job_type, "status": self.status,
                "user_id": self.user_id, "version": self.version,
                "progress": self.progress or {}}


State = Job | Change


@dataclass(frozen=True)
class Credential:
    """What let a stream in: a user's token or session; it ends when they end."""

    user_id: int
    token_id: int | None = None
    session_id: UUID | None = None

    @property
    def key(self) -> tuple[str, str]:
        """As EventsDb.live_credentials names it: a session if there is one, else the token."""
        if self.session_id:
            return "session", str(self.session_id)
        return "token", str(self.token_id)


class Subscription:
    """One stream's mailbox: the latest unsent state of each job it watches, never a backlog."""

    __slots__ = ("job_ids", "user_id", "workflow_id", "credential", "_latest", "_seen",
                 "waiter", "_poked", "closed", "wire", "lane")

    def __init__(self, job_ids: frozenset[UUID], user_id: int | None,
                 credential: Credential | None = None, workflow_id: UUID | None = None) -> None:
        self.job_ids = job_ids
        self.user_id = user_id
        #: Only this workflow's jobs of ``user_id`` (server/workflow_stream.py).
        self.workflow_id = workflow_id
        self.credential = credential
        # Both keyed by the job id's integer: a UUID hashes in Python, an int in C, and a state
        # offered to a thousand streams is looked up three times in each.
        self._latest: dict[int, State] = {}
        self._seen: dict[int, int] = {}  # highest version sent or waiting, per job
        #: The waiting `next`, if any (the fan-out reads it). A bare future, not an
        #: asyncio.Event: waking a thousand streams per state, Event.set was an eighth of the
        #: events process's CPU.
        self.waiter: asyncio.Future[None] | None = None
        self._poked = False
        self.closed = False
        #: The stream's path to its socket past ASGI `send`, once its response is under way
        #: (server/fanout.py): news is then written in the fan-out's batch, not by its task.
        self.wire: Wire | None = None
        #: Its job's lane while it is in step with it (server/fanout.py): states then go to
        #: the lane, not to this mailbox.
        self.lane: Lane | None = None

    @property
    def pending(self) -> int:
        """How many states wait to be sent (at most one per watched job)."""
        return len(self._latest)

    def offer(self, job: State, reset: bool = False) -> None:
        """Keep ``job`` if it is newer than anything sent or waiting; it replaces older ones.

        ``reset``: the row went back to this version; keep it whatever was seen before.
        """
        offer_each((self,), job, reset)

    def sent(self, job: Job) -> None:
        """Record a state sent outside the mailbox (the initial read); older ones are dropped."""
        key = job.id.int
        self._seen[key] = max(job.version, self._seen.get(key, 0))
        waiting = self._latest.get(key)
        if waiting is not None and waiting.version <= job.version:
            del self._latest[key]

    def seen(self) -> dict[UUID, int]:
        """The highest version sent or waiting, per job (a copy)."""
        if self.lane is not None:
            self._seen[self.lane.key] = self.lane.version
        return {UUID(int=key): version for key, version in self._seen.items()}

    def close(self) -> None:
        """No more news: ``next`` returns what waits, then an empty list."""
        self.closed = True
        if self.lane is not None:
            self.lane.leave(self)  # pyright: ignore[reportArgumentType] (see _wake)
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is None or waiter.done():
            return  # its task is busy: it takes what waits before it waits again
        if self.wire is not None and not self.closed:
            # no task switch: the fan-out writes it with the others (pyright: fanout.py's
            # Subscription comes through an import loop under TYPE_CHECKING, which it misreads)
            self.wire.fanout.ready(self)  # pyright: ignore[reportArgumentType]
        else:
            waiter.set_result(None)

    def wake_task(self) -> None:
        """Hand what waits to the stream's own task (the fan-out could not write it)."""
        if self.lane is not None:
            self.lane.leave(self)  # pyright: ignore[reportArgumentType] (see _wake)
        if self.parked:
            self.waiter.set_result(None)  # type: ignore[union-attr]

    @property
    def parked(self) -> bool:
        """Whether the stream's task waits in ``next`` (so nothing of it is being sent)."""
        return self.waiter is not None and not self.waiter.done()

    def take(self) -> list[State]:
        """The waiting states, removed (what ``next`` returns, without waiting)."""
        self._poked = False
        jobs = list(self._latest.values())
        self._latest.clear()
        return jobs

    def poke(self) -> None:
        """Wake ``next`` even with no news (a keep-alive ping is due)."""
        self._poked = True
        self._wake()

    def revoke(self) -> None:
        """Its credential ended: nothing more is sent, not even what waits."""
        if self.lane is not None:
            self.lane.leave(self)  # pyright: ignore[reportArgumentType] (see _wake)
        self._latest.clear()
        self.close()

    async def next(self) -> list[State]:
        """Wait for news; the waiting states (one per job, in the order the jobs first changed).

        An empty list means the subscription was closed (the service is stopping, the client
        left) or poked (see ``closed``).
        """
        while not self._latest and not self.closed and not self._poked:
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
                if self.lane is not None:  # its task runs: the lane must not write meanwhile
                    self.lane.leave(self)  # pyright: ignore[reportArgumentType] (see _wake)
        return self.take()


class Firehose(Subscription):
    """Every job's changes (admins): the latest waiting state per job, at most
    FIREHOSE_MAX_WAITING of them, and no memory of what was sent (it would grow for ever)."""

    __slots__ = ("dropped",)

    def __init__(self) -> None:
        super().__init__(frozenset(), None)
        self.dropped = 0

    def offer(self, job: State, reset: bool = False) -> None:
        key = job.id.int
        waiting = self._latest.get(key)
        if waiting is not None and waiting.version >= job.version and not reset:
            return
        if waiting is None and len(self._latest) >= FIREHOSE_MAX_WAITING:
            self.dropped += 1
            return
        self._latest[key] = job
        self._wake()


class Broadcaster:
    """The process's LISTEN connection and the in-memory fan-out to subscriptions."""

    def __init__(self, url: str, db: EventsDb) -> None:
        self.url = url
        self.db = db
        self.connected = False
        self.notifications = 0
        self.reconnects = 0
        self._by_job: dict[UUID, set[Subscription]] = {}
        self._by_user: dict[int, set[Subscription]] = {}
        self._by_owner: dict[int, set[Subscription]] = {}  # by the user of their credential
        self._subs: set[Subscription] = set()
        self._firehoses: set[Firehose] = set()
        self._lanes: dict[UUID, Lane] = {}  # by job (server/fanout.py)
        # The latest known row of each job someone watches: progress-only notifications are
        # applied to it instead of re-reading the row.
        self._rows: dict[UUID, Job] = {}
        self._alive_at: datetime | None = None
        self._closing = False

    # Subscriptions ---------------------------------------------------------------------------

    def subscribe(self, job_ids: frozenset[UUID] = frozenset(), user_id: int | None = None,
                  credential: Credential | None = None,
                  workflow_id: UUID | None = None) -> Subscription:
        """A stream's subscription: to ``job_ids``, and to every job of ``user_id`` (only those
        of ``workflow_id`` when given: a workflow's jobs are found through their owner)."""
        sub = Subscription(job_ids, user_id, credential, workflow_id)
        if self._closing:
            sub.close()
        self._subs.add(sub)
        if credential is not None:
            self._by_owner.setdefault(credential.user_id, set()).add(sub)
        for job_id in job_ids:
            self._by_job.setdefault(job_id, set()).add(sub)
        if user_id is not None:
            self._by_user.setdefault(user_id, set()).add(sub)
        return sub

    def subscribe_all(self) -> Firehose:
        """Every change to every job (the operator view), from the notifications alone."""
        sub = Firehose()
        if self._closing:
            sub.close()
        self._subs.add(sub)
        self._firehoses.add(sub)
        return sub

    def lane(self, job_id: UUID, fanout: Fanout) -> Lane:
        """The lane of ``job_id``'s streams (server/fanout.py); one per watched job."""
        lane = self._lanes.get(job_id)
        if lane is None:
            known = self._rows.get(job_id)
            lane = self._lanes[job_id] = Lane(job_id.int, fanout,
                                              known.version if known is not None else 0)
        return lane

    def unsubscribe(self, sub: Subscription) -> None:
        if sub.lane is not None:
            sub.lane.leave(sub)  # pyright: ignore[reportArgumentType] (see _wake)
        self._subs.discard(sub)
        if isinstance(sub, Firehose):
            self._firehoses.discard(sub)
        if sub.credential is not None:
            _discard(self._by_owner, sub.credential.user_id, sub)
        for job_id in sub.job_ids:
            _discard(self._by_job, job_id, sub)
            if job_id not in self._by_job:
                self._lanes.pop(job_id, None)
        candidates = set(sub.job_ids)
        if sub.user_id is not None:
            _discard(self._by_user, sub.user_id, sub)
            if sub.user_id not in self._by_user:
                candidates.update(j for j, row in self._rows.items() if row.user_id == sub.user_id)
        for job_id in candidates:
            row = self._rows.get(job_id)
            if row is not None and not self._watched(row):
                del self._rows[job_id]

    def close_all(self) -> None:
        """The process is stopping: end every stream (now and to come) after what it holds."""
        self._closing = True
        for sub in self._subs:
            sub.close()

    @property
    def open_streams(self) -> int:
        """How many subscriptions (streams) are open in this process."""
        return len(self._subs)

    async def keepalive(self, seconds: float) -> None:
        """Every ``seconds``, wake every stream so that it sends a ping (proxies keep it open).

        One timer for the process instead of one task per stream.
        """
        while True:
            await asyncio.sleep(seconds)
            for sub in list(self._subs):
                sub.poke()

    def stats(self) -> dict[str, Any]:
        return {
            "subscriptions": len(self._subs),
            "listen_connected": self.connected,
            "watched_jobs": len(self._by_job),
            "watched_users": len(self._by_user),
            "cached_jobs": len(self._rows),
            "pending_max": max((s.pending for s in self._subs), default=0),
            "pending_total": sum(s.pending for s in self._subs),
            "notifications": self.notifications,
            "reconnects": self.reconnects,
            "all_jobs_streams": len(self._firehoses),
            # Job streams in step with their job's lane (server/fanout.py): the fast path.
            "streams_in_lanes": sum(len(lane.members) for lane in self._lanes.values()),
            "all_jobs_dropped": sum(f.dropped for f in self._firehoses),
        }

    def publish(self, job: Job, reset: bool = False) -> None:
        """A state of ``job`` (read or derived): remember it and offer it to its watchers.

        ``reset``: the table went back to this older version (see the module's docstring).
        """
        known = self._rows.get(job.id)
        if not reset and known is not None and known.version >= job.version:
            return
        if job.id in self._by_job or (job.status not in FINISHED and self._watched(job)):
            self._rows[job.id] = job
        else:
            self._rows.pop(job.id, None)  # finished and watched only through its owner
        lane = self._lanes.get(job.id)
        subs = self._by_job.get(job.id, ())
        if lane is not None:
            lane.offer(job, reset)
        if lane is None or len(lane.members) < len(subs):  # some are outside the lane
            offer_each(subs, job, reset)
        if job.user_id is not None:
            offer_each(self._by_user.get(job.user_id, ()), job, reset)

    def _watched(self, job: Job) -> bool:
        return job.id in self._by_job or job.user_id in self._by_user

    # The connection -------------------------------------------------------------------------

    async def run(self) -> None:
        """Listen for ever: reconnect with backoff, log each loss, never give up."""
        delay = BACKOFF_MIN
        while True:
            try:
                await self._listen()
            except NoSession as exc:
                # Retrying cannot help: the URL must change (and /events/healthz says 503).
                log.error("%s; live updates are off until restart", exc)
                return
            except (psycopg.Error, DatabaseUnavailable, OSError) as exc:
                log.warning("LISTEN connection lost or refused (%s); reconnecting in %.1fs",
                            first_line(exc), delay)
            except Exception:
                log.exception("listener failed; reconnecting in %.1fs", delay)
            if self.connected:
                self.connected = False
                delay = BACKOFF_MIN  # it was up: the first retry comes quickly
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, BACKOFF_MAX)
            self.reconnects += 1

    async def _listen(self) -> None:
        conn = await channels.alisten(self.url, (CHANNEL, AUTH_CHANNEL), APPLICATION_NAME)
        async with conn:
            since, self._alive_at = self._alive_at, await _db_now(conn)
            await self._resync(since)
            await self._recheck(list(self._subs))  # credentials that ended meanwhile
            self.connected = True
            log.info("listening on %s (%d subscriptions, %d jobs re-read)", CHANNEL,
                     len(self._subs), len(self._rows))
            while True:
                # psycopg hands over every notification that arrived in one read without
                # yielding to the event loop in between, so a burst is applied as a whole and
                # each stream then sends once, the latest state of each job. Yielding after
                # every notification made each one cost a full round of sends: with a
                # thousand streams the service fell seconds behind (docs/benchmarks.md).
                async for note in conn.notifies(timeout=PROBE_SECONDS):
                    self.notifications += 1
                    if note.channel == AUTH_CHANNEL:
                        await self._on_auth(note.payload)
                        continue
                    payload = channels.parse_progress(note.payload)
                    if payload is None:
                        log.warning("dropped an unparsable %s payload: %.200r", CHANNEL,
                                    note.payload)
                        continue
                    await self._on_payload(payload)
                self._alive_at = await _db_now(conn)

    async def _resync(self, since: datetime | None) -> None:
        """Re-read every watched job (and, after an outage, the watched users' recent jobs)."""
        ids = set(self._by_job) | set(self._rows)
        seen = self._versions(ids)
        jobs = await self.db.get_jobs(ids)
        # Only what the read looked for: a stream that subscribed during it (its job not
        # among ``ids``) is not gone, and its own first read got its state.
        self._end_gone((ids & self._by_job.keys()) - {job.id for job in jobs})
        if since is not None and self._by_user:
            jobs += await self.db.user_jobs_since(list(self._by_user), since - RESYNC_MARGIN)
        self._publish_read(jobs, seen)

    def _end_gone(self, gone: set[UUID]) -> None:
        """End the streams of watched jobs that are no longer in the table (deleted meanwhile,
        or lost in a failover to an asynchronous standby): no news would ever come, and the
        client's reconnection then gets its 404."""
        for job_id in gone:
            self._rows.pop(job_id, None)
            subs = [s for s in self._by_job.get(job_id, ()) if s.job_ids <= gone]
            if subs:
                log.warning("job %s is gone (deleted, or lost in a failover): ending its %d "
                            "stream(s)", job_id, len(subs))
            for sub in subs:
                sub.close()

    def _versions(self, ids: set[UUID]) -> dict[UUID, int]:
        """The versions known now of ``ids``: what a read that starts now must not be behind."""
        return {i: row.version for i in ids if (row := self._rows.get(i)) is not None}

    def _publish_read(self, jobs: list[Job], seen: dict[UUID, int]) -> None:
        """Publish rows read from the table; one behind ``seen`` (known before the read
        began) means the row went back, and its state is sent anyway."""
        for job in sorted(jobs, key=lambda j: j.version):
            went_back = job.version < seen.get(job.id, 0)
            if went_back:
                log.warning("job %s went back from version %s to %s (a restore, a failover or "
                            "a crash that lost commits?): sending its current state", job.id,
                            seen[job.id], job.version)
            self.publish(job, reset=went_back)

    async def _on_auth(self, raw: str) -> None:
        """A token or session of this user ended: end the streams it opened."""
        payload = channels.parse_auth(raw)
        if payload is None:
            log.warning("dropped an unparsable %s payload: %.200r", AUTH_CHANNEL, raw)
            return
        await self._recheck(list(self._by_owner.get(payload["user_id"], ())))

    async def _recheck(self, subs: list[Subscription]) -> None:
        """Revoke the subscriptions whose credential no longer lets their user in."""
        creds = {s.credential for s in subs if s.credential is not None}
        if not creds:
            return
        live = await self.db.live_credentials(
            [c.token_id for c in creds if c.token_id is not None and c.session_id is None],
            [c.session_id for c in creds if c.session_id is not None])
        for sub in subs:
            cred = sub.credential
            if cred is None or cred.key in live:
                continue
            log.info("ending a stream of user %s: its %s was revoked or ended", cred.user_id,
                     cred.key[0])
            sub.revoke()

    async def _on_payload(self, payload: ProgressPayload | InsertedPayload) -> None:
        if "ids" in payload:
            await self._on_inserted(payload)  # type: ignore[arg-type]
            return
        payload = cast(ProgressPayload, payload)
        if self._firehoses:
            await self._to_firehoses(payload)
        job_id, user_id = payload["id"], payload.get("user_id")
        complete = "version" in payload
        if not (job_id in self._by_job or (user_id is not None and user_id in self._by_user)
                or (not complete and self._by_user)):
            return
        known = self._rows.get(job_id)
        if known is not None and complete and payload["version"] == known.version:
            return
        older = known is not None and complete and payload["version"] < known.version
        job = None if older else _apply(known, payload)
        if job is None:
            # New to us, a status change (result, timestamps, attempts move with it), an
            # id-only payload, or older than what we hold (stale, or the row went back): the
            # table holds the truth.
            seen = self._versions({job_id})
            self._publish_read(await self.db.get_jobs([job_id]), seen)
            return
        self.publish(job)


    async def _to_firehoses(self, payload: ProgressPayload) -> None:
        state: State
        if "version" in payload:
            state = Change(payload["id"], payload["version"], payload.get("user_id"),
                           payload.get("job_type", ""), payload.get("status", ""),
                           payload.get("progress"))
        else:  # too big to tell: the row
            rows = await self.db.get_jobs([payload["id"]])
            if not rows:
                return
            state = rows[0]
        for sub in self._firehoses:
            sub.offer(state)

    async def _on_inserted(self, payload: InsertedPayload) -> None:
        """New or changed jobs of one user: read the rows someone watches (owner, id, or all)."""
        user_id = payload["user_id"]
        watched_user = user_id is not None and user_id in self._by_user
        ids = payload["ids"] if self._firehoses else [
            i for i in payload["ids"] if watched_user or i in self._by_job]
        for job in await self.db.get_jobs(ids):
            self.publish(job)
            for sub in self._firehoses:
                sub.offer(job)


def offer_each(subs: Iterable[Subscription], job: State, reset: bool = False) -> None:
    """``sub.offer(job, reset)`` for each of ``subs`` (none a Firehose): the one place a state
    enters a subscription's mailbox, inlined for the many.

    A state offered to a thousand streams cost each of them three calls (``offer``, ``_wake``
    and the fan-out's ``ready``): a third of the Python between a notification and the
    sockets. The streams the fan-out will write are queued on it, and it is scheduled once.
    """
    key, version = job.id.int, job.version
    workflow_id = getattr(job, "workflow_id", None)
    fanouts: set[Fanout] = set()
    for sub in subs:
        if sub.lane is not None:
            continue  # in step with its job's lane, which took the state
        seen = sub._seen
        if not reset and version <= seen.get(key, 0):
            continue
        if sub.workflow_id is not None and workflow_id != sub.workflow_id:
            continue
        seen[key] = version
        sub._latest[key] = job
        waiter = sub.waiter
        if waiter is None or waiter.done():
            continue  # its task is busy: it takes what waits before it waits again
        wire = sub.wire
        if wire is None or sub.closed:
            waiter.set_result(None)
            continue
        wire.fanout.queued[sub] = None  # pyright: ignore[reportArgumentType] (see _wake)
        fanouts.add(wire.fanout)
    for fanout in fanouts:
        fanout.schedule()


def _apply(known: Job | None, payload: ProgressPayload) -> Job | None:
    """``known`` moved on by a progress-only payload; None when the row must be read."""
    if known is None or "version" not in payload or payload.get("status") != known.status:
        return None
    progress = payload.get("progress")
    if progress == known.progress:
        return None  # something the payload does not carry changed (a result, say)
    return dataclasses.replace(known, progress=progress, version=payload["version"])


async def _db_now(conn: psycopg.AsyncConnection) -> datetime:
    cur = await conn.execute(q("events_db_now"))
    row = await cur.fetchone()
    assert row is not None
    return row[0]


def _discard(index: dict[Any, set[Subscription]], key: Any, sub: Subscription) -> None:
    subs = index.get(key)
    if subs is not None:
        subs.discard(sub)
        if not subs:
            del index[key]
