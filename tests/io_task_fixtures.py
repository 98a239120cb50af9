"""Concurrent job types for tests only (BGJOBS_TASK_MODULES=tests.io_task_fixtures): a worker
that loads them starts an IO process, so they live apart from tests/task_fixtures.py."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from typing import Any

from bgjobs.tasks.registry import Param, task


@task("io_sleep", concurrency=200, params={"seconds": Param(float, default=0.1)})
async def io_sleep(ctx: Any) -> Any:
    """Await a sleep, as on a partner API; the result says when it ran, and where."""
    start = time.time()
    ctx.progress(0, 1, stage="waiting")
    await asyncio.sleep(ctx.params["seconds"])
    ctx.progress(1, 1, stage="done")
    return {"pid": os.getpid(), "start": start, "end": time.time()}


@task("io_wait", concurrency=50, params={"seconds": Param(float, default=5.0)})
async def io_wait(ctx: Any) -> Any:
    """Await in small steps, reporting progress (with its process) each step."""
    steps = max(1, int(ctx.params["seconds"] / 0.05))
    for i in range(steps):
        ctx.progress(i, steps, pid=os.getpid())
        await asyncio.sleep(0.05)
    return {"pid": os.getpid()}


@task("io_stubborn", concurrency=50)
async def io_stubborn(ctx: Any) -> Any:
    """Swallows its cancellation: only killing its process stops it."""
    ctx.progress(0, 1, pid=os.getpid())
    while True:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(10)


@task("io_flaky", retry_delay=0.2)
async def io_flaky(ctx: Any) -> Any:
    """Fails its first attempt (an async task with the default concurrency)."""
    if ctx.attempt == 1:
        raise ConnectionError("partner API down")
    return {"attempt": ctx.attempt}


@task("io_block", concurrency=10, params={"seconds": Param(float, default=0.5)})
async def io_block(ctx: Any) -> Any:
    """Blocks the event loop (a sync sleep in an async handler): the worker logs it."""
    time.sleep(ctx.params["seconds"])
    return {"pid": os.getpid()}


@task("io_threaded", concurrency=20, params={"seconds": Param(float, default=0.2)})
def io_threaded(ctx: Any) -> Any:
    """A plain handler declared concurrent: it runs in a thread of the IO process."""
    start = time.time()
    ctx.progress(0, 1)
    time.sleep(ctx.params["seconds"])
    return {"pid": os.getpid(), "start": start, "end": time.time()}


@task("io_gate", concurrency=10, retry_delay=0.2, params={"gate": Param(str, required=True)})
async def io_gate(ctx: Any) -> Any:
    """Runs until the file ``gate`` exists (the test opens it), saying where it runs: a test
    knows which jobs started, without guessing at durations."""
    ctx.progress(0, 1, pid=os.getpid())
    while not os.path.exists(ctx.params["gate"]):
        await asyncio.sleep(0.05)
    return {"pid": os.getpid()}


@task("io_limited", concurrency=5, max_running=6, params={"gate": Param(str, required=True)})
async def io_limited(ctx: Any) -> Any:
    """io_gate with a limit above its concurrency: 6 across all workers, 5 per IO process."""
    return await io_gate(ctx)


@task("io_rated", concurrency=5, starts_per_second=50,
      params={"gate": Param(str, required=True)})
async def io_rated(ctx: Any) -> Any:
    """io_gate with a start rate that does not bind (50 a second): rate-limited all the same."""
    return await io_gate(ctx)


@task("io_noted", concurrency=10, retry_delay=0.2,
      params={"runs": Param(str, required=True), "gate": Param(str, default=""),
              "seconds": Param(float, default=0.0)})
async def io_noted(ctx: Any) -> Any:
    """Appends "<job id> <attempt> start" to the file ``runs``, waits for the file ``gate`` (if
    any) and ``seconds``, then appends "... end": a test counts each attempt's runs apart from
    what the table says (which an outage or a failover may change)."""
    _note(ctx.params["runs"], f"{ctx.job_id} {ctx.attempt} start")
    ctx.progress(0, 1, pid=os.getpid())
    gate = ctx.params["gate"]
    while gate and not os.path.exists(gate):
        await asyncio.sleep(0.05)
    await asyncio.sleep(ctx.params["seconds"])
    _note(ctx.params["runs"], f"{ctx.job_id} {ctx.attempt} end")
    return {"pid": os.getpid(), "attempt": ctx.attempt}


def _note(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())  # one write: whole lines, from any process
    finally:
        os.close(fd)
