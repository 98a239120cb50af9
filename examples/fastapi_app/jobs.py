"""The app's job type; workers import this module alone (BGJOBS_TASK_MODULES=jobs), not the app."""

from __future__ import annotations

import asyncio
from typing import Any

import bgjobs


@bgjobs.task("fastapi_report", params={
    "steps": bgjobs.Param(int, default=20, min=1, max=1000),
    "delay": bgjobs.Param(float, default=0.1, min=0, max=5),
})
def report(ctx: bgjobs.JobContext) -> dict[str, Any]:
    """A report whose work is a coroutine (I/O-bound steps), reporting progress as it goes."""

    async def work() -> dict[str, Any]:
        steps = ctx.params["steps"]
        for step in range(1, steps + 1):
            await asyncio.sleep(ctx.params["delay"])  # a query, an HTTP call...
            ctx.check_cancelled()
            ctx.progress(step, steps, stage="reading")
        return {"rows": steps}

    return asyncio.run(work())
