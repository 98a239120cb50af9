"""``validation``: backtest a moving-average strategy over the synthetic S&P 500 universe."""

from __future__ import annotations

import random
import statistics
from typing import Any

import bgjobs
from backend.market.data import (
    TRADING_DAYS,
    UNIVERSE,
    crossover,
    prices,
    r6,
    sharpe,
    universe,
)
from bgjobs import NonRetryable, Param


@bgjobs.task("validation", exclusive=True, params={
    "tickers": Param(int, default=UNIVERSE, min=1, max=UNIVERSE),
    "years": Param(int, default=8, min=1, max=20),
    "fast": Param(int, default=20, min=2, max=100),
    "slow": Param(int, default=100, min=5, max=300),
    "bootstrap": Param(int, default=100, min=0, max=1000),
    "seed": Param(int, default=42),
})
def validation(ctx: Any) -> dict[str, Any]:
    """Backtest an MA crossover on every ticker; summary statistics with bootstrap significance."""
    p = ctx.params
    days = p["years"] * TRADING_DAYS
    if p["fast"] >= p["slow"]:
        raise NonRetryable("fast must be shorter than slow")
    if p["slow"] + 20 > days:
        raise NonRetryable(f"{p['years']} year(s) of prices is too short for slow={p['slow']}")
    names = universe(p["seed"])[: p["tickers"]]
    rng = random.Random(f"{p['seed']}:bootstrap")
    rows = []
    for i, ticker in enumerate(names):
        closes = prices(p["seed"], ticker, days)
        bt = crossover(closes, p["fast"], p["slow"])
        # Share of resampled return series whose Sharpe is <= 0: a bootstrap p-value.
        worse = sum(sharpe(rng.choices(bt.returns, k=len(bt.returns))) <= 0
                    for _ in range(p["bootstrap"]))
        rows.append({
            "ticker": ticker, "annual_return": bt.annual_return, "sharpe": bt.sharpe,
            "max_drawdown": bt.max_drawdown, "trades": bt.trades,
            "buy_hold": (closes[-1] / closes[p["slow"]]) ** (TRADING_DAYS / (days - p["slow"])) - 1,
            "p_value": worse / p["bootstrap"] if p["bootstrap"] else None,
        })
        ctx.progress(i + 1, len(names), stage="backtesting", ticker=ticker)
    best = max(rows, key=lambda r: r["annual_return"])
    worst = min(rows, key=lambda r: r["annual_return"])
    significant = [r for r in rows if r["p_value"] is not None and r["p_value"] < 0.05]
    return {
        "tickers": len(rows), "days": days,
        "strategy": {"fast": p["fast"], "slow": p["slow"]},
        "mean_annual_return": r6(statistics.fmean(r["annual_return"] for r in rows)),
        "median_annual_return": r6(statistics.median(r["annual_return"] for r in rows)),
        "buy_hold_mean_annual_return": r6(statistics.fmean(r["buy_hold"] for r in rows)),
        "mean_sharpe": r6(statistics.fmean(r["sharpe"] for r in rows)),
        "mean_max_drawdown": r6(statistics.fmean(r["max_drawdown"] for r in rows)),
        "mean_trades": r6(statistics.fmean(r["trades"] for r in rows)),
        "profitable_share": r6(sum(r["annual_return"] > 0 for r in rows) / len(rows)),
        "significant_share": r6(len(significant) / len(rows)) if p["bootstrap"] else None,
        "best": {"ticker": best["ticker"], "annual_return": r6(best["annual_return"])},
        "worst": {"ticker": worst["ticker"], "annual_return": r6(worst["annual_return"])},
    }
