"""The app's job type; workers import this module alone (BGJOBS_TASK_MODULES=jobs), not the app."""

from __future__ import annotations

import asyncio
from typing import Any

import bgjobs


@bgjobs.task("fastapi_report", concurrency=50, params={
    "steps": bgjobs.Param(int, default=20, min=1, max=1000),
    "delay": bgjobs.Param(float, default=0.1, min=0, max=5),
})
async def report(ctx: bgjobs.JobContext) -> dict[str, Any]:
    """A report whose steps wait on I/O, reporting progress as it goes: an ``async def`` task,
    so a worker runs up to 50 of them at once in its IO process (one event loop)."""
    steps = ctx.params["steps"]
    for step in range(1, steps + 1):
        await asyncio.sleep(ctx.params["delay"])  # a query, an HTTP call...
        ctx.progress(step, steps, stage="reading")
    return {"rows": steps}
