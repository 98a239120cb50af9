"""The IO-bound job type of `make bench`'s io section (BGJOBS_TASK_MODULES=bench.io_tasks).

Apart from bench/tasks.py: a worker that loads it starts an IO process, which the other
sections must not have.
"""

from __future__ import annotations

import asyncio
from typing import Any

from bgjobs.tasks.registry import Param, task

#: Jobs one IO process runs at once (pgqueuer gets the same max_concurrent_tasks).
CONCURRENCY = 500


@task("bench_io_sleep", concurrency=CONCURRENCY,
      params={"seconds": Param(float, default=0.1, min=0.0, max=60.0)})
async def bench_io_sleep(ctx: Any) -> None:
    """Await ``seconds`` (a partner API's answer), reporting progress before and after."""
    ctx.progress(0, 1, stage="waiting")
    await asyncio.sleep(ctx.params["seconds"])
    ctx.progress(1, 1, stage="done")


@task("bench_io_http", concurrency=CONCURRENCY)
async def bench_io_http(ctx: Any) -> None:
    """GET the bench's local server (it answers after 100 ms), progress before and after."""
    from bench.io_http import call

    ctx.progress(0, 1, stage="waiting")
    await call()
    ctx.progress(1, 1, stage="done")


@task("bench_io_hold", concurrency=10_000,
      params={"seconds": Param(float, default=3.0, min=0.0, max=600.0)})
async def bench_io_hold(ctx: Any) -> None:
    """Await ``seconds`` with progress before and after: thousands in flight at once."""
    ctx.progress(0, 1, stage="waiting")
    await asyncio.sleep(ctx.params["seconds"])
    ctx.progress(1, 1, stage="done")
