"""Deterministic synthetic market data and a moving-average backtest, shared by the job types.

Everything is generated in-process from a seed (no downloads): the same seed gives the same
universe, the same prices and the same results on every machine. Plain ``random.Random`` with
string seeds is stable across Python runs (it hashes the string with SHA-512).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from functools import lru_cache

TRADING_DAYS = 252
UNIVERSE = 500
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@lru_cache(maxsize=8)
def universe(seed: int, size: int = UNIVERSE) -> tuple[str, ...]:
    """``size`` distinct ticker symbols of 2 to 4 letters."""
    rng = random.Random(f"{seed}:universe")
    seen: dict[str, None] = {}
    while len(seen) < size:
        seen["".join(rng.choice(_LETTERS) for _ in range(rng.randint(2, 4)))] = None
    return tuple(seen)


@lru_cache(maxsize=8)
def market_returns(seed: int, days: int) -> tuple[float, ...]:
    """Daily log returns of the market factor every stock partly follows."""
    rng = random.Random(f"{seed}:market")
    return tuple(rng.gauss(0.0003, 0.009) for _ in range(days))


def prices(seed: int, ticker: str, days: int) -> list[float]:
    """Daily closes: a beta to the market plus the stock's own drift and noise."""
    rng = random.Random(f"{seed}:{ticker}")
    beta = rng.uniform(0.4, 1.6)
    drift = rng.gauss(0.0001, 0.0004)
    vol = rng.uniform(0.008, 0.025)
    price = rng.uniform(10.0, 400.0)
    out = [price]
    gauss = rng.gauss
    for m in market_returns(seed, days - 1):
        price *= math.exp(beta * m + drift + vol * gauss(0.0, 1.0))
        out.append(price)
    return out


def log_returns(closes: list[float]) -> list[float]:
    return [math.log(b / a) for a, b in zip(closes, closes[1:], strict=False)]


@dataclass(frozen=True)
class Backtest:
    returns: list[float]  # daily log returns of the strategy
    trades: int

    @property
    def annual_return(self) -> float:
        return math.expm1(sum(self.returns) * TRADING_DAYS / max(1, len(self.returns)))

    @property
    def sharpe(self) -> float:
        return sharpe(self.returns)

    @property
    def max_drawdown(self) -> float:
        peak = level = 0.0
        worst = 0.0
        for r in self.returns:
            level += r
            peak = max(peak, level)
            worst = min(worst, level - peak)
        return -math.expm1(worst)


def sharpe(returns: list[float]) -> float:
    n = len(returns)
    if n < 2:
        return 0.0
    mean = sum(returns) / n
    var = sum((r - mean) ** 2 for r in returns) / (n - 1)
    return 0.0 if var <= 0 else mean / math.sqrt(var) * math.sqrt(TRADING_DAYS)


def crossover(closes: list[float], fast: int, slow: int, band: float = 0.0,
              cost: float = 0.0005) -> Backtest:
    """Long while the fast moving average is above the slow one (by ``band``), else flat."""
    prefix = [0.0]
    for c in closes:
        prefix.append(prefix[-1] + c)
    daily = log_returns(closes)
    out: list[float] = []
    held = False
    trades = 0
    for t in range(slow, len(closes) - 1):
        fast_ma = (prefix[t + 1] - prefix[t + 1 - fast]) / fast
        slow_ma = (prefix[t + 1] - prefix[t + 1 - slow]) / slow
        want = fast_ma > slow_ma * (1.0 + band)
        r = daily[t] if want else 0.0
        if want != held:
            trades += 1
            r -= cost
            held = want
        out.append(r)
    return Backtest(out, trades)


def r6(x: float) -> float:
    """Round for results people read (and compare across runs)."""
    return round(x, 6)
