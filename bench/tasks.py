"""Job types used only by `make bench` (loaded with BGJOBS_TASK_MODULES=bench.tasks)."""

from __future__ import annotations

import time
from typing import Any

from bgjobs.tasks.registry import Param, task


@task("bench_stamp", params={"file": Param(str, required=True), "n": Param(int, default=0)})
def bench_stamp(ctx: Any) -> None:
    """Append the wall-clock time the handler started and ``n`` to ``file`` (pickup latency)."""
    with open(ctx.params["file"], "a") as out:
        out.write(f"{time.time()} {ctx.params['n']}\n")


@task("bench_spin", params={"seconds": Param(float, default=1.0, min=0.0, max=600.0)})
def bench_spin(ctx: Any) -> None:
    """Burn CPU for ``seconds`` (jobs that fill every worker process)."""
    end = time.perf_counter() + ctx.params["seconds"]
    x = 0
    while time.perf_counter() < end:
        for i in range(10_000):
            x += i * i


@task("bench_report", params={"seconds": Param(float, default=60.0, min=0.0, max=3600.0)})
def bench_report(ctx: Any) -> None:
    """Run ``seconds``, reporting progress about once a second (progress traffic)."""
    end = time.monotonic() + ctx.params["seconds"]
    n = 0
    while time.monotonic() < end:
        n += 1
        ctx.progress(current=n, total=int(ctx.params["seconds"]), stage="working")
        ctx.check_cancelled()
        time.sleep(1.0)
