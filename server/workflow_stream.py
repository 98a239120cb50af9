"""``GET /events/workflows/<id>``: one workflow as one SSE stream (docs/events.md).

The stream sends every state of the workflow's jobs exactly as the job streams do (the job as
the API shows it, its version as the event id), and after the states that moved a job from
one state to another a ``summary`` event: jobs done of total, counts by state, the job that
failed first. It ends after the summary that says ``finished``. A workflow's jobs are found
through their owner: the subscription is the user's, filtered by workflow id
(server/broadcast.py), so the stream costs the broadcaster what a user stream costs, keeps one
waiting state per job for a slow reader, and is re-read on a LISTEN reconnect like any other.

The summary's event id, ``w<n>``, is the sum of the workflow's versions: it grows with every
change of any of its jobs. A client that reconnects naming the current one has everything (a
204 when the workflow is finished); any other client gets every job's state (the first
WORKFLOW_JOBS_MAX) and the summary again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from bgjobs.core.errors import BgjobsError
from bgjobs.core.jobs import Job, Status, Workflow
from bgjobs.core.store_jobs import WORKFLOW_JOBS_MAX
from bgjobs.server.broadcast import Broadcaster, Credential, State, Subscription
from bgjobs.server.errors import ApiError
from bgjobs.server.events_db import EventsDb

log = logging.getLogger(__name__)

#: At most one summary read per stream this often (states are sent as they come), so a busy
#: workflow costs a stream about five reads a second.
SUMMARY_SECONDS = 0.2


@dataclass
class Opened:
    """A workflow stream about to start: its subscription and what it sends first."""

    workflow_id: UUID
    user_id: int
    sub: Subscription
    jobs: list[Job]
    summary: dict[str, Any]
    up_to_date: bool  # the client named the current summary: send no snapshot


async def open_stream(broadcaster: Broadcaster, db: EventsDb, workflow_id: UUID, user_id: int,
                      credential: Credential | None, last_event_id: str) -> Opened | None:
    """Subscribe, then read the workflow; None when the client already has its final state.

    ApiError 404 when the user has no job in it (another user's workflow, or none).
    """
    # Subscribe before reading: a change committed in between is not lost.
    sub = broadcaster.subscribe(user_id=user_id, credential=credential, workflow_id=workflow_id)
    try:
        # The jobs, then the summary: the summary is never older than the jobs sent with it,
        # so a change after it is one the stream has not sent, and brings a new summary.
        jobs = await db.workflow_jobs(workflow_id, user_id, WORKFLOW_JOBS_MAX)
        summary = await db.workflow_summary(workflow_id, user_id)
    except BaseException:
        broadcaster.unsubscribe(sub)
        raise
    if summary is None:
        broadcaster.unsubscribe(sub)
        raise ApiError(404, "not_found", f"no workflow {workflow_id}")
    up_to_date = last_event_id.strip() == summary_id(summary)
    if up_to_date and finished(summary):
        broadcaster.unsubscribe(sub)
        return None  # 204: EventSource stops reconnecting
    if up_to_date:
        jobs = []  # the client has them; what changed since the subscription is in its mailbox
    for job in jobs:
        broadcaster.publish(job)  # later progress-only notifications apply to these rows
        sub.sent(job)
    return Opened(workflow_id, user_id, sub, jobs, summary, up_to_date)


async def stream(opened: Opened, db: EventsDb, encoded: Callable[[State], bytes],
                 retry: bytes, ping: bytes) -> AsyncIterator[bytes]:
    """The stream's bytes: the snapshot, then each round of states and its summary."""
    sub, summary = opened.sub, opened.summary
    phases = {job.id: phase(job) for job in opened.jobs}
    if opened.up_to_date:
        yield b": up to date\r\n" + retry
    else:
        # Finished already: the rows read before the summary may miss the last changes.
        last = await _unsent(opened, db) if finished(summary) else []
        yield (retry + b"".join(encoded(job) for job in [*opened.jobs, *last])
               + encode_summary(opened))
    if finished(summary):
        return
    summary_at = time.monotonic()
    owed: float | None = None  # when the summary a moved job calls for is due
    while True:
        wait = None if owed is None else owed - time.monotonic()
        timed_out = False
        if wait is None:
            jobs = await sub.next()
        elif wait > 0:
            try:
                jobs = await asyncio.wait_for(sub.next(), wait)
            except TimeoutError:
                jobs, timed_out = [], True
        else:
            jobs, timed_out = sub.take(), True
        if jobs:
            for job in jobs:
                if isinstance(job, Job) and phases.get(job.id) != (now := phase(job)):
                    phases[job.id] = now
                    # Throttled: the states go out now, the summary at most every
                    # SUMMARY_SECONDS (progress alone leaves the counts as they were).
                    owed = owed or max(time.monotonic(), summary_at + SUMMARY_SECONDS)
            yield b"".join(encoded(job) for job in jobs)
        elif not timed_out:
            if sub.closed:
                return
            yield ping
            continue
        if owed is None or time.monotonic() < owed:
            continue
        owed, summary_at = None, time.monotonic()
        try:
            read = await db.workflow_summary(opened.workflow_id, opened.user_id)
            if read is not None and finished(read):
                # The last jobs' notifications may still be on their way: send their rows.
                last = await _unsent(opened, db)
                opened.summary = read
                yield b"".join(encoded(job) for job in last) + encode_summary(opened)
                return
        except BgjobsError as exc:
            # The client reconnects (retry) and gets every state again from the table.
            log.warning("ending the stream of workflow %s: %s", opened.workflow_id, exc)
            return
        if read is None:
            return  # its jobs were deleted
        opened.summary = read
        yield encode_summary(opened)


async def _unsent(opened: Opened, db: EventsDb) -> list[Job]:
    """What waits in the subscription and what the table holds beyond it, latest per job."""
    latest: dict[UUID, Any] = {job.id: job for job in opened.sub.take()}
    for job in await db.workflow_unsent(opened.workflow_id, opened.user_id,
                                        opened.sub.seen(), WORKFLOW_JOBS_MAX):
        latest[job.id] = job
        opened.sub.sent(job)
    return sorted(latest.values(), key=lambda job: job.version)


def phase(job: Job) -> str:
    """The job's place in the summary's counts (pending is split into waiting and ready)."""
    if job.status == Status.PENDING and job.waiting_for > 0:
        return "waiting"
    return str(job.status)


def finished(summary: dict[str, Any]) -> bool:
    return summary["waiting"] + summary["pending"] + summary["running"] == 0


def summary_id(summary: dict[str, Any]) -> str:
    return f"w{summary['versions']}"


def summary_json(workflow_id: UUID, summary: dict[str, Any]) -> dict[str, Any]:
    """The summary event's data: the API's workflow summary, with the workflow's id."""
    counts = {k: v for k, v in summary.items() if k not in ("failed", "versions")}
    body = Workflow(workflow_id, counts, summary["failed"], []).to_json()
    return {"workflow_id": body["workflow_id"], **body["summary"]}


def encode_summary(opened: Opened) -> bytes:
    body = json.dumps(summary_json(opened.workflow_id, opened.summary), separators=(",", ":"))
    return (f"event: summary\r\nid: {summary_id(opened.summary)}\r\n"
            f"data: {body}\r\n\r\n").encode()
