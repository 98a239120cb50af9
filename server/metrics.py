"""Prometheus text exposition of the job table, read from Postgres on every scrape.

Nothing is counted in process memory, so every API worker (and every API machine) reports
the same numbers, and a restart loses nothing.
"""

from __future__ import annotations

from collections.abc import Iterable

from bgjobs.core.jobs import FINISHED, Status
from bgjobs.core.store import Store

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
RECENT_WINDOW_SECONDS = 300


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: str) -> str:
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    return "{" + inner + "}" if inner else ""


def _family(name: str, kind: str, help_: str, samples: Iterable[tuple[str, float]]) -> list[str]:
    lines = [f"# HELP {name} {help_}", f"# TYPE {name} {kind}"]
    lines += [f"{name}{labels} {_number(value)}" for labels, value in samples]
    return lines


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def render(store: Store) -> str:
    """The metrics page; raises DatabaseUnavailable when Postgres cannot be read."""
    summary = store.summary()
    recent = store.finished_recently(RECENT_WINDOW_SECONDS)
    by_status = [(row["job_type"], row["status"], row["jobs"]) for row in summary]
    oldest: dict[str, float] = {}
    for row in summary:
        if row["status"] == Status.PENDING and row["oldest_pending_seconds"] is not None:
            oldest[row["job_type"]] = row["oldest_pending_seconds"]
    lines = ["# bgjobs metrics, read from Postgres at scrape time"]
    lines += _family(
        "bgjobs_jobs", "gauge", "Jobs in the table by type and status.",
        ((_labels(type=t, status=s), n) for t, s, n in by_status))
    lines += _family(
        "bgjobs_jobs_finished", "gauge",
        "Finished jobs still in the table (complete, error, cancelled) by type and status.",
        ((_labels(type=t, status=s), n) for t, s, n in by_status if s in FINISHED))
    lines += _family(
        "bgjobs_oldest_pending_job_age_seconds", "gauge",
        "Age of the oldest pending job by type (absent when none is pending).",
        ((_labels(type=t), age) for t, age in sorted(oldest.items())))
    lines += _family(
        "bgjobs_jobs_finished_recently", "gauge",
        f"Jobs that finished in the last {RECENT_WINDOW_SECONDS} seconds by type and status.",
        ((_labels(type=r["job_type"], status=r["status"],
                  window=f"{RECENT_WINDOW_SECONDS}s"), r["jobs"]) for r in recent))
    lines += _family(
        "bgjobs_job_run_seconds_recently", "gauge",
        f"Summed run time of the jobs that finished in the last {RECENT_WINDOW_SECONDS} "
        "seconds, by type and status (divide by bgjobs_jobs_finished_recently for a mean).",
        ((_labels(type=r["job_type"], status=r["status"],
                  window=f"{RECENT_WINDOW_SECONDS}s"), r["run_seconds"]) for r in recent))
    lines += _family("bgjobs_database_up", "gauge", "1 when this scrape could read Postgres.",
                     [("", 1)])
    return "\n".join(lines) + "\n"
