"""``demo``: counts through its steps over a few seconds, so a dashboard shows a live bar."""

from __future__ import annotations

import time
from typing import Any

from bgjobs.tasks.registry import NonRetryable, Param, task


@task("demo", params={
    "seconds": Param(float, default=5.0, min=0.0, max=3600.0),
    "steps": Param(int, default=20, min=1, max=10_000),
    "fail": Param(bool, default=False),
})
def demo(ctx: Any) -> dict[str, Any]:
    """Counts to steps over seconds, reporting progress; with fail set, fails halfway."""
    p = ctx.params
    steps, pause = p["steps"], p["seconds"] / p["steps"]
    for step in range(1, steps + 1):
        time.sleep(pause)
        if p["fail"] and step > steps // 2:
            raise NonRetryable(f"failed on purpose at step {step} of {steps} (fail: true)")
        ctx.progress(step, steps, stage="counting")
    return {"steps": steps, "seconds": p["seconds"]}
