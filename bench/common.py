"""Helpers shared by the bench sections: percentiles, sizes, machine facts."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from bgjobs.core.db import make_pool
from bgjobs.core.store import Store

# The tests start the embedded cluster without fsync (tests.conftest sets BGJOBS_PG_DURABLE=0
# when it is imported); the bench measures the durable cluster users run, unless told otherwise.
os.environ.setdefault("BGJOBS_PG_DURABLE", "1")
from tests.conftest import _server_url, add_job, migrated_database  # noqa: E402


@contextmanager
def bench_database(server: str | None = None) -> Iterator[str]:
    """A migrated scratch database on ``server`` (default: DATABASE_URL's or the embedded)."""
    server = make_conninfo(server, dbname="postgres") if server else _server_url()
    with migrated_database(server) as url:
        yield url


def user_with_job(url: str, name: str, job_type: str) -> tuple[str, str]:
    """A new user (``name`` and a time stamp) with one job of ``job_type``: (token, job id)."""
    pool = make_pool(url, min_size=1, max_size=1, open_wait=True)
    try:
        store = Store(pool)
        user, token = store.create_user(f"{name}{int(time.time() * 1000) % 10**9}")
        return token, str(add_job(store, job_type, user_id=user.id).id)
    finally:
        pool.close()


def as_url(conninfo: str) -> str:
    """A libpq key=value string as a postgresql:// URL (asyncpg takes only URLs)."""
    from urllib.parse import quote

    from psycopg.conninfo import conninfo_to_dict

    d = conninfo_to_dict(conninfo)
    auth = quote(str(d.get("user", "postgres")))
    if d.get("password"):
        auth += ":" + quote(str(d["password"]))
    return (f"postgresql://{auth}@{d.get('host', '127.0.0.1')}:{d.get('port', 5432)}/"
            f"{d.get('dbname', 'postgres')}")


def percentile(values: list[float], pct: float) -> float:
    """The nearest-rank percentile (no interpolation); nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, int(round(pct / 100 * len(ordered) + 0.5)) - 1))
    return ordered[k]


def quick_sizes(quick: bool, full: tuple[int, ...], small: tuple[int, ...]) -> tuple[int, ...]:
    return small if quick else full


def machine(url: str) -> dict[str, Any]:
    with psycopg.connect(url) as c:
        server = c.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
        durability = {name: c.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]
                      for name in ("fsync", "synchronous_commit", "full_page_writes")}
    try:
        with open("/proc/cpuinfo") as info:
            model = next(line.split(":", 1)[1].strip() for line in info
                         if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        load = os.getloadavg()
    except OSError:
        load = (0.0, 0.0, 0.0)
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=False).stdout.strip()
    except OSError:
        commit = ""
    return {"cpus": os.cpu_count(), "cpu_model": model, "memory_gb": round(mem / 2**30, 1),
            "python": platform.python_version(), "postgres": server, "kernel": platform.release(),
            "load_average_at_start": [round(x, 2) for x in load], "commit": commit,
            "postgres_durability": durability}
