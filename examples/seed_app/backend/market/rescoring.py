"""``rescoring``: recompute every stock's score from momentum, volatility and simulated risk."""

from __future__ import annotations

import math
import random
import statistics
from typing import Any

import bgjobs
from backend.market.data import (
    TRADING_DAYS,
    UNIVERSE,
    Backtest,
    log_returns,
    prices,
    r6,
    universe,
)
from bgjobs import Param

HORIZON = 63  # trading days of the simulated risk horizon (a quarter)


@bgjobs.task("rescoring", exclusive=True, params={
    "tickers": Param(int, default=UNIVERSE, min=1, max=UNIVERSE),
    "years": Param(int, default=3, min=1, max=20),
    "simulations": Param(int, default=3500, min=1, max=20000),
    "top": Param(int, default=10, min=1, max=100),
    "seed": Param(int, default=42),
})
def rescoring(ctx: Any) -> dict[str, Any]:
    """Score each stock 0-100 from momentum, volatility, drawdown and bootstrapped quarterly VaR."""
    p = ctx.params
    days = p["years"] * TRADING_DAYS
    names = universe(p["seed"])[: p["tickers"]]
    rng = random.Random(f"{p['seed']}:rescoring")
    raw: list[dict[str, Any]] = []
    for i, ticker in enumerate(names):
        closes = prices(p["seed"], ticker, days)
        rets = log_returns(closes)
        lookback = min(len(closes) - 1, TRADING_DAYS)
        skip = min(21, lookback // 2)
        # Quarterly 5% value at risk from bootstrapped paths of daily returns.
        sims = sorted(sum(rng.choices(rets, k=HORIZON)) for _ in range(p["simulations"]))
        raw.append({
            "ticker": ticker,
            "momentum": math.log(closes[-1 - skip] / closes[-1 - lookback]),
            "volatility": statistics.pstdev(rets) * math.sqrt(TRADING_DAYS),
            "drawdown": Backtest(rets, 0).max_drawdown,
            "var": -math.expm1(sims[int(0.05 * len(sims))]),
        })
        ctx.progress(i + 1, len(names), stage="scoring", ticker=ticker)
    z = {k: _zscores([r[k] for r in raw]) for k in ("momentum", "volatility", "drawdown", "var")}
    scored = []
    for n, r in enumerate(raw):
        composite = (z["momentum"][n] - 0.5 * z["volatility"][n] - 0.25 * z["drawdown"][n]
                     - 0.25 * z["var"][n])
        score = max(0.0, min(100.0, 50.0 + 10.0 * composite))
        scored.append({"ticker": r["ticker"], "score": round(score, 2),
                       "rating": "buy" if score >= 60 else "sell" if score < 40 else "hold"})
    scored.sort(key=lambda s: (-s["score"], s["ticker"]))
    counts = {k: sum(s["rating"] == k for s in scored) for k in ("buy", "hold", "sell")}
    return {
        "scored": len(scored), "counts": counts,
        "mean_score": r6(statistics.fmean(s["score"] for s in scored)),
        "top": scored[: p["top"]],
        "bottom": scored[-min(5, len(scored)):][::-1],
    }


def _zscores(values: list[float]) -> list[float]:
    mean = statistics.fmean(values)
    sd = statistics.pstdev(values)
    return [0.0 if sd == 0 else (v - mean) / sd for v in values]
