"""Operations: job type settings, schedules, retention, the workers' own rows, health and the
operator view's reads (009_operations.sql); the SQL is in queries.sql.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple
from uuid import UUID

import psycopg
from psycopg.types.json import Jsonb

from bgjobs.core.connections import ConnectionSource, lend
from bgjobs.core.errors import NotFound
from bgjobs.core.jobs import Job
from bgjobs.core.queries import q
from bgjobs.core.rows import dict_rows, job_row, record_row


class JobTypeRow(NamedTuple):
    """What the registry tells the database about one job type (bgjobs_job_types)."""

    job_type: str
    exclusive: bool = False
    max_attempts: int = 3
    max_running: int | None = None
    starts_per_second: float | None = None


@dataclass(frozen=True)
class Schedule:
    """One row of bgjobs_schedules."""

    name: str
    job_type: str
    cron: str
    timezone: str
    params: dict[str, Any]
    priority: int
    enabled: bool
    catch_up: bool
    source: str
    last_tick: datetime | None
    last_job_id: UUID | None
    created_at: datetime


@dataclass(frozen=True)
class Retention:
    """How long finished jobs are kept, unless their type says otherwise in bgjobs_job_types."""

    complete: timedelta = timedelta(days=7)
    error: timedelta = timedelta(days=30)
    cancelled: timedelta = timedelta(days=7)


@dataclass(frozen=True)
class IoProcesses:
    """A worker's IO processes, for its row in bgjobs_workers (023)."""

    processes: int = 0
    #: type -> jobs one IO process runs at once
    concurrency: dict[str, int] = field(default_factory=dict)
    #: one per live IO process: {"pid", "running", "waiting"}
    jobs: list[dict[str, int]] = field(default_factory=list)


class OperationsStore:
    """Job types, limits, schedules, retention, workers and the operator view, over a
    ConnectionSource."""

    def __init__(self, source: ConnectionSource) -> None:
        self.source = source

    def connection(self, conn: psycopg.Connection | None = None
                   ) -> AbstractContextManager[psycopg.Connection]:
        """The caller's connection if given (their transaction), else one the source lends."""
        return lend(self.source, conn)

    def _dicts(self, query: str, args: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        with self.connection() as c, c.cursor(row_factory=dict_rows) as cur:
            return cur.execute(q(query), args or {}).fetchall()

    # Job types and limits ------------------------------------------------------------------

    def sync_job_types(self, types: Sequence[JobTypeRow]) -> None:
        """Record the registered job types: exclusivity, max_attempts and declared limits."""
        rows = sorted(JobTypeRow(*r) for r in types)
        if not rows:
            return
        with self.connection() as c:
            c.execute(q("sync_job_types"), {
                "types": [r.job_type for r in rows], "exclusive": [r.exclusive for r in rows],
                "max_attempts": [r.max_attempts for r in rows],
                "max_running": [r.max_running for r in rows],
                "rates": [r.starts_per_second for r in rows]})

    def limited_types(self) -> dict[str, float | None]:
        """Limited job types and their starts per second (None: a max_running limit only)."""
        return {r["job_type"]: r["starts_per_second"] for r in self._dicts("limited_types")}

    def job_type_limits(self) -> list[dict[str, Any]]:
        return self._dicts("job_type_limits")

    # Schedules ---------------------------------------------------------------------------------

    def sync_schedules(self, declared: Sequence[tuple[str, str, str]],
                       undeclared: Sequence[str]) -> None:
        """Write code schedules (name, cron, timezone); drop those of tasks that lost theirs."""
        rows = sorted(declared)
        with self.connection() as c, c.transaction():
            c.execute(q("sync_schedules"), {"names": [r[0] for r in rows],
                                            "crons": [r[1] for r in rows],
                                            "timezones": [r[2] for r in rows]})
            c.execute(q("drop_code_schedules"), {"names": sorted(undeclared)})

    def schedules(self) -> list[Schedule]:
        with self.connection() as c, c.cursor(row_factory=record_row(Schedule)) as cur:
            return cur.execute(q("list_schedules")).fetchall()

    def get_schedule(self, name: str) -> Schedule:
        with self.connection() as c, c.cursor(row_factory=record_row(Schedule)) as cur:
            found = cur.execute(q("get_schedule"), {"name": name}).fetchone()
        if found is None:
            raise NotFound(f"no schedule {name!r}")
        return found

    def advance_schedule(self, c: psycopg.Connection, name: str, tick: datetime) -> bool:
        """In the caller's transaction: True if this caller won ``tick`` of the schedule."""
        return c.execute(q("advance_schedule"), {"name": name, "tick": tick}).fetchone() is not None

    def schedule_enqueued(self, c: psycopg.Connection, name: str, job_id: UUID) -> None:
        c.execute(q("schedule_enqueued"), {"name": name, "job_id": job_id})

    # Retention and workers -----------------------------------------------------------------

    def purge_batch(self, limit: int, retention: Retention,
                    now: datetime | None = None) -> int | None:
        """Delete up to ``limit`` expired finished jobs; None if another worker is purging."""
        args = {"limit": limit, "now": now, "keep_complete": retention.complete,
                "keep_error": retention.error, "keep_cancelled": retention.cancelled}
        with self.connection() as c:
            row = c.execute(q("purge_batch"), args).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def worker_heartbeat(self, worker_id: str, machine: str, pid: int, processes: int,
                         running: int, types: Sequence[str], lease_seconds: int,
                         io: IoProcesses | None = None) -> None:
        io = io or IoProcesses()
        with self.connection() as c:
            c.execute(q("worker_heartbeat"), {
                "worker_id": worker_id, "machine": machine, "pid": pid,
                "processes": processes, "running": running, "types": list(types),
                "lease_seconds": lease_seconds, "io_processes": io.processes,
                "io_concurrency": Jsonb(io.concurrency), "io_jobs": Jsonb(io.jobs)})

    def worker_stopped(self, worker_id: str) -> None:
        with self.connection() as c:
            c.execute(q("worker_stopped"), {"worker_id": worker_id})

    # The operator view -------------------------------------------------------------------

    def admin_list_jobs(self, *, user_id: int | None = None, status: str | None = None,
                        job_type: str | None = None, since: datetime | None = None,
                        until: datetime | None = None, limit: int = 50,
                        before: tuple[datetime | str, UUID] | None = None) -> list[Job]:
        """Every user's jobs, newest first; ``before`` is the previous page's last position."""
        args = {"user_id": user_id, "status": status, "job_type": job_type, "since": since,
                "until": until, "limit": limit,
                "before_created": before[0] if before else None,
                "before_id": before[1] if before else None}
        with self.connection() as c, c.cursor(row_factory=job_row) as cur:
            return cur.execute(q("admin_list_jobs"), args).fetchall()

    def throughput(self, since: datetime) -> list[dict[str, Any]]:
        """(minute, kind, jobs) rows: kind is started, completed or failed."""
        return self._dicts("throughput", {"since": since})

    def workers(self) -> list[dict[str, Any]]:
        return self._dicts("workers")

    def summary(self) -> list[dict[str, Any]]:
        with self.connection() as c, c.cursor(row_factory=dict_rows) as cur:
            return cur.execute(q("summary")).fetchall()

    def ping(self) -> None:
        """Raise DatabaseUnavailable unless a pooled connection answers (health checks)."""
        with self.connection() as c:
            c.execute(q("ping")).fetchone()

    def finished_recently(self, seconds: int) -> list[dict[str, Any]]:
        """Jobs that finished in the last ``seconds``, by type and status, with run times."""
        with self.connection() as c, c.cursor(row_factory=dict_rows) as cur:
            return cur.execute(q("finished_recently"), {"seconds": seconds}).fetchall()

    def stuck_jobs(self, limit: int = 50) -> list[dict[str, Any]]:
        return self._dicts("stuck_jobs", {"limit": limit})
