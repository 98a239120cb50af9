"""examples/seed_app's market job types in-process on small params: plausible, deterministic
results. The app's routes: test_seed_app_routes.py; its types under a real worker:
tests/e2e/test_seed_app.py."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest

from bgjobs.tasks import registry
from bgjobs.tasks.context import JobContext, ProgressThrottle
from tests.seed_app_client import EXAMPLE


@pytest.fixture(scope="module", autouse=True, name="market")
def market_fixture() -> Iterator[ModuleType]:
    """The seed app's market data module, its job types registered (as its workers do)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(EXAMPLE))
        registry.load_tasks(["backend.jobs"])
        yield importlib.import_module("backend.market.data")


def run(job_type: str, params: dict[str, Any]) -> tuple[Any, list[dict]]:
    task = registry.get(job_type)
    sent: list[dict] = []
    throttle = ProgressThrottle(sent.append)
    result = task.handler(JobContext("j", job_type, task.validate(params), 1, throttle, set()))
    if throttle.unsent():
        sent.append(throttle.unsent())
    return result, sent


def test_market_data_is_deterministic_and_plausible(market):
    names = market.universe(42)
    assert len(names) == 500 and len(set(names)) == 500
    a = market.prices(42, names[0], 504)
    assert a == market.prices(42, names[0], 504) != market.prices(43, names[0], 504)
    assert len(a) == 504 and all(p > 0 for p in a)
    daily = market.log_returns(a)
    assert 0.002 < max(abs(r) for r in daily) < 0.3


def test_validation(market):
    result, progress = run("validation", {"tickers": 12, "years": 2, "bootstrap": 5})
    assert result == run("validation", {"tickers": 12, "years": 2, "bootstrap": 5})[0]
    assert result["tickers"] == 12 and result["days"] == 504
    assert -1 < result["mean_annual_return"] < 2 and 0 <= result["profitable_share"] <= 1
    assert 0 <= result["mean_max_drawdown"] < 1 and result["best"]["ticker"] in market.universe(42)
    assert progress[-1]["current"] == progress[-1]["total"] == 12
    assert progress[-1]["stage"] == "backtesting"


def test_validation_rejects_impossible_windows():
    with pytest.raises(registry.NonRetryable):
        run("validation", {"tickers": 1, "fast": 50, "slow": 20})


def test_optimization():
    params = {"tickers": 3, "years": 1, "population": 8, "generations": 4}
    result, progress = run("optimization", params)
    assert result == run("optimization", params)[0]
    best = result["best"]
    assert 2 <= best["fast"] < best["slow"] <= 200 and 0 <= best["band"] <= 0.03
    assert len(result["history"]) == 4 and result["history"] == sorted(result["history"])
    assert result["fitness"] == result["history"][-1]
    assert [p["current"] for p in progress][-1] == 4 and "best_fitness" in progress[-1]


def test_rescoring():
    result, progress = run("rescoring", {"tickers": 30, "years": 1, "simulations": 20, "top": 5})
    assert result == run("rescoring", {"tickers": 30, "years": 1, "simulations": 20, "top": 5})[0]
    assert result["scored"] == 30 and sum(result["counts"].values()) == 30
    scores = [s["score"] for s in result["top"]]
    assert len(scores) == 5 and scores == sorted(scores, reverse=True)
    assert all(0 <= s <= 100 for s in scores) and 40 < result["mean_score"] < 60
    assert progress[-1]["current"] == 30


def test_product_types_are_exclusive_and_noop_is_not():
    for name in ("validation", "optimization", "rescoring"):
        assert registry.get(name).exclusive
    assert not registry.get("noop").exclusive
