"""The app's job types. The workers import them too: BGJOBS_TASK_MODULES=backend.jobs.

validation, optimization and rescoring are the seed's market computations (backend/market/),
registered by importing that package; screening was guarded by ``screening_lock`` and
``active_screenings``. Now each is an exclusive type: Postgres keeps one of each pending or
running per user, whichever gunicorn worker or machine takes the request.
"""

from __future__ import annotations

import math
import random
import statistics
from typing import Any

import backend.market  # noqa: F401 - registers validation, optimization and rescoring
import bgjobs
from bgjobs import Param


@bgjobs.task("screening", exclusive=True, params={
    "stocks": Param(int, default=300, min=1, max=5000),
    "days": Param(int, default=250, min=20, max=2500),
    "min_momentum": Param(float, default=0.05),
    "seed": Param(int, default=1),
})
def screening(ctx: Any) -> dict[str, Any]:
    """Screen synthetic stocks for momentum with acceptable volatility."""
    p = ctx.params
    passed = []
    for n in range(p["stocks"]):
        rng = random.Random(f"{p['seed']}:{n}")
        returns = [rng.gauss(0.0004, 0.02) for _ in range(p["days"])]
        momentum = math.expm1(sum(returns[-p["days"] // 2:]))
        volatility = statistics.pstdev(returns) * math.sqrt(252)
        if momentum >= p["min_momentum"] and volatility < 0.4:
            passed.append({"stock": f"S{n:04d}", "momentum": round(momentum, 4),
                           "volatility": round(volatility, 4)})
        ctx.progress(n + 1, p["stocks"], stage="screening", passed=len(passed))
    passed.sort(key=lambda s: s["momentum"], reverse=True)
    return {"screened": p["stocks"], "passed": len(passed), "top": passed[:10]}
