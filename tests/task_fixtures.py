"""Job types for tests only, loaded with BGJOBS_TASK_MODULES=tests.task_fixtures."""

from __future__ import annotations

import os
import time
from typing import Any

from bgjobs.tasks.registry import NonRetryable, Param, task


@task("record", params={"path": Param(str, required=True)})
def record(ctx: Any) -> Any:
    """Append the job id to a file, so a test can count how often each job ran."""
    with open(ctx.params["path"], "a") as f:
        f.write(f"{ctx.job_id}\n")
    return {"ok": True}


@task("slow", params={"seconds": Param(float, default=5.0), "step": Param(float, default=0.05)})
def slow(ctx: Any) -> Any:
    """Sleep in small steps, reporting progress (and so checking for cancellation) each step."""
    steps = max(1, int(ctx.params["seconds"] / ctx.params["step"]))
    for i in range(steps):
        ctx.progress(i, steps, stage="sleeping", pid=os.getpid(), attempt=ctx.attempt)
        time.sleep(ctx.params["step"])
    return {"pid": os.getpid(), "attempt": ctx.attempt}


@task("slow_logged", params={"seconds": Param(float, default=5.0),
                             "step": Param(float, default=0.05),
                             "runs": Param(str, required=True)})
def slow_logged(ctx: Any) -> Any:
    """``slow``, after appending "<job id> <attempt>" to the file ``runs``: a test counts the
    handler's runs apart from anything the database says (which a failover may change)."""
    fd = os.open(ctx.params["runs"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{ctx.job_id} {ctx.attempt}\n".encode())  # one write: whole lines
    finally:
        os.close(fd)
    return slow(ctx)


@task("spin", params={"seconds": Param(float, default=5.0)})
def spin(ctx: Any) -> Any:
    """A CPU loop that never reports progress or checks for cancellation after it starts."""
    ctx.progress(0, 1, stage="spinning", pid=os.getpid())
    end = time.monotonic() + ctx.params["seconds"]
    n = 0
    while time.monotonic() < end:
        n += 1
    return {"pid": os.getpid(), "loops": n}


@task("fail", retry_delay=0.2)
def fail(ctx: Any) -> Any:
    """Always raises: retried with backoff until max_attempts."""
    raise RuntimeError(f"boom on attempt {ctx.attempt}")


@task("fatal", non_retryable=(ValueError,))
def fatal(ctx: Any) -> Any:
    """Raises an error its task declares not retryable."""
    raise ValueError("bad input, retrying will not help")


@task("fatal_explicit")
def fatal_explicit(ctx: Any) -> Any:
    """Raises NonRetryable."""
    raise NonRetryable("give up now")


@task("chatty", params={"calls": Param(int, default=100_000)})
def chatty(ctx: Any) -> Any:
    """Calls progress in a tight loop."""
    n = ctx.params["calls"]
    for i in range(n):
        ctx.progress(i + 1, n)
    return {"calls": n}


@task("crash_once")
def crash_once(ctx: Any) -> Any:
    """Kills its own process on the first attempt (a segfault, the OOM killer); fine after."""
    if ctx.attempt == 1:
        os._exit(3)
    return {"attempt": ctx.attempt, "pid": os.getpid()}


@task("gated", params={"steps": Param(int, default=10, min=2), "gate": Param(str, required=True)})
def gated(ctx: Any) -> Any:
    """Reports half its steps, waits until the file ``gate`` exists, then reports the rest."""
    steps = ctx.params["steps"]
    for i in range(steps):
        while i == steps // 2 and not os.path.exists(ctx.params["gate"]):
            ctx.check_cancelled()
            time.sleep(0.05)
        ctx.progress(i + 1, steps, stage="stepping")
        time.sleep(0.15)
    return {"steps": steps}


@task("limited", max_running=2, params={"seconds": Param(float, default=0.2)})
def limited(ctx: Any) -> Any:
    """At most two run at once across all workers."""
    time.sleep(ctx.params["seconds"])
    return {"pid": os.getpid()}


@task("nightly", cron="0 2 * * *", timezone="Europe/Paris")
def nightly(ctx: Any) -> Any:
    """Declares a schedule in code."""
    return {"ran": True}


@task("niceness")
def niceness(ctx: Any) -> Any:
    """The job process's nice value and its parent's (the supervisor)."""
    return {"nice": os.getpriority(os.PRIO_PROCESS, 0),
            "parent_nice": os.getpriority(os.PRIO_PROCESS, os.getppid())}


@task("add_up", params={"n": Param(int, default=0)})
def add_up(ctx: Any) -> Any:
    """Its n plus the totals of the jobs it waited for (workflows)."""
    return {"total": ctx.params["n"] + sum(r["total"] for r in ctx.dependencies.values())}
