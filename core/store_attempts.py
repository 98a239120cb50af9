"""The worker's side of the jobs: claims, and the writes it makes about the attempts it runs,
each fenced on (status, worker_id, attempts) and reporting the jobs it no longer owns.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg.types.json import Jsonb

from bgjobs.core.connections import ConnectionSource, lend
from bgjobs.core.jobs import Attempt, Claimed, Completion, Failure, Job, ProgressUpdate
from bgjobs.core.queries import q
from bgjobs.core.rows import Unreadable, dict_rows, job_row

log = logging.getLogger(__name__)


class AttemptStore:
    """Claim jobs and record their attempts' heartbeats, progress and outcomes."""

    def __init__(self, source: ConnectionSource) -> None:
        self.source = source

    def connection(self, conn: psycopg.Connection | None = None
                   ) -> AbstractContextManager[psycopg.Connection]:
        """The caller's connection if given (their transaction), else one the source lends."""
        return lend(self.source, conn)

    def claim(
        self,
        worker_id: str,
        types: Sequence[str],
        *,
        limit: int = 1,
        lease_seconds: int = 30,
        now: datetime | None = None,
    ) -> list[Job]:
        """Claim like ``claim_specs`` (the same statement), returning whole rows, best first."""
        specs = self.claim_specs(worker_id, types, limit=limit, lease_seconds=lease_seconds,
                                 now=now)
        if not specs:
            return []
        with self.connection() as c, c.cursor(row_factory=job_row) as cur:
            rows = cur.execute(q("get_jobs"), {"ids": [spec.id for spec in specs]}).fetchall()
        by_id = {job.id: job for job in rows}
        return [by_id[spec.id] for spec in specs if spec.id in by_id]

    def claim_specs(
        self,
        worker_id: str,
        types: Sequence[str],
        *,
        limit: int = 1,
        lease_seconds: int = 30,
        now: datetime | None = None,
    ) -> list[Claimed]:
        """Claim up to ``limit`` due jobs of ``types`` in one statement, best first.

        Rows are (id, job_type, params, attempts, max_attempts, version): at thousands of jobs
        a second, parsing whole rows (timestamps, progress) costs the worker more than running
        them.
        """
        args = {"worker_id": worker_id, "types": list(types), "limit": limit,
                "lease_seconds": lease_seconds, "now": now}
        with self.connection() as c:
            claimed = [Claimed(*row) for row in c.execute(q("claim_jobs"), args)]
        for job in claimed:
            if isinstance(job.params, Unreadable):  # the task's check fails it, with this logged
                log.warning("job %s: its params cannot be read (%r...): it will fail",
                            job.id, str(job.params))
        return claimed

    def next_due_in(self, types: Sequence[str], claim_age: float = 0.0) -> float | None:
        """Seconds until a job the claim of ``claim_age`` seconds ago could not take is due."""
        with self.connection() as c:
            row = c.execute(q("next_due_in"),
                            {"types": list(types), "claim_age": claim_age}).fetchone()
        return row[0] if row else None

    def heartbeat(self, attempts: Sequence[Attempt]) -> set[UUID]:
        """Refresh heartbeats; returns the job ids still owned (the rest were lost)."""
        return self._fenced("heartbeat_jobs", attempts, {})

    # The outcome writes read their items by position (core/jobs.py's outcome types, or tuples
    # of their leading fields), as the worker made them: nothing is rebuilt on the way.

    def report_progress(self, updates: Sequence[ProgressUpdate]) -> set[UUID]:
        """Write progress for many attempts at once; returns the job ids still owned."""
        return self._fenced("progress_jobs", [u[0] for u in updates],
                            {"progress": [Jsonb(u[1]) for u in updates]})

    def complete(self, done: Sequence[Completion]) -> set[UUID]:
        """Finish attempts as complete, with their results; returns the job ids still owned."""
        return self._fenced("complete_jobs", [d[0] for d in done], {
            "results": [Jsonb(d[1]) for d in done],
            "progress": [Jsonb(d[2]) if d[2] is not None else None for d in done],
        })

    def fail(self, failed: Sequence[Failure]) -> dict[UUID, str]:
        """End failed attempts (retried after their delay while allowed); {id: new status}."""
        attempts = [f[0] for f in failed]
        args = {
            **_attempt_arrays(attempts),
            "errors": [Jsonb(f[1]) for f in failed],
            "retryable": [f[2] for f in failed],
            "delays": [float(f[3]) for f in failed],
        }
        if not attempts:
            return {}
        with self.connection() as c:
            return {row[0]: row[1] for row in c.execute(q("fail_jobs"), args)}

    def release(self, attempts: Sequence[Attempt]) -> set[UUID]:
        """Hand attempts back to pending without spending an attempt (graceful shutdown)."""
        return self._fenced("release_jobs", attempts, {})

    def reap_stale(self, now: datetime | None = None, reaper: str | None = None,
                   running: Iterable[UUID | str] | None = None) -> list[dict[str, Any]]:
        """Take back jobs whose heartbeat is older than their lease (one reaper at a time);
        ``reaper`` is the calling worker's id and ``running`` the ids of the jobs it runs: those
        are alive and left alone (None: every job naming it)."""
        with self.connection() as c, c.transaction(), c.cursor(row_factory=dict_rows) as cur:
            return cur.execute(q("reap_stale"), _reaper(now, reaper, running)).fetchall()

    def reap_and_list_listeners(self, application_name: str, now: datetime | None = None,
                                reaper: str | None = None,
                                running: Iterable[UUID | str] | None = None
                                ) -> tuple[list[dict[str, Any]], list[int]]:
        """``reap_stale``, and in the same transaction (no commit more) the backend pids of the
        connections named ``application_name`` on this database, in order."""
        with self.connection() as c, c.transaction(), c.cursor(row_factory=dict_rows) as cur:
            reaped = cur.execute(q("reap_stale"), _reaper(now, reaper, running)).fetchall()
            pids = [row["pid"] for row in cur.execute(
                q("worker_listeners"), {"application_name": application_name})]
        return reaped, pids

    def wake_workers(self, job_types: Iterable[str]) -> None:
        """Ask every idle worker of these types to claim (NOTIFY '*<type>')."""
        with self.connection() as c:
            c.execute(q("wake_workers"), {"types": sorted(set(job_types))}).fetchall()

    def _fenced(self, query: str, attempts: Sequence[Attempt], extra: dict[str, Any]) -> set[UUID]:
        if not attempts:
            return set()
        with self.connection() as c:
            rows = c.execute(q(query), {**_attempt_arrays(attempts), **extra}).fetchall()
        return {row[0] for row in rows}


def _reaper(now: datetime | None, reaper: str | None,
            running: Iterable[UUID | str] | None) -> dict[str, Any]:
    return {"now": now, "reaper": reaper,
            "running": None if running is None else [str(i) for i in running]}


def _attempt_arrays(attempts: Sequence[Attempt]) -> dict[str, list[Any]]:
    return {
        "ids": [a.job_id for a in attempts],
        "worker_ids": [a.worker_id for a in attempts],
        "attempts": [a.attempt for a in attempts],
    }

