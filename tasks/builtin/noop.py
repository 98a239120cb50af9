"""``noop``: returns at once; for benchmarks and tests."""

from __future__ import annotations

from typing import Any

from bgjobs.tasks.registry import Param, task


@task("noop", params={"echo": Param(object, default=None)})
def noop(ctx: Any) -> Any:
    """Does nothing and returns at once."""
    return {"echo": ctx.params.get("echo")}
