"""``optimization``: a genetic algorithm over the crossover strategy's parameters."""

from __future__ import annotations

import random
import statistics
from typing import Any

import bgjobs
from backend.market.data import TRADING_DAYS, crossover, prices, r6, universe
from bgjobs import Param

#: (name, low, high, kind) of each gene
GENES = (("fast", 2, 60, int), ("slow", 20, 200, int), ("band", 0.0, 0.03, float))


@bgjobs.task("optimization", exclusive=True, params={
    "tickers": Param(int, default=50, min=1, max=500),
    "years": Param(int, default=5, min=1, max=20),
    "population": Param(int, default=30, min=4, max=200),
    "generations": Param(int, default=40, min=1, max=200),
    "mutation": Param(float, default=0.25, min=0.0, max=1.0),
    "seed": Param(int, default=7),
})
def optimization(ctx: Any) -> dict[str, Any]:
    """Evolve (fast, slow, band) to maximise the mean Sharpe ratio over a sample of tickers."""
    p = ctx.params
    days = p["years"] * TRADING_DAYS
    series = [prices(p["seed"], t, days) for t in universe(p["seed"])[: p["tickers"]]]
    rng = random.Random(f"{p['seed']}:ga")
    cache: dict[tuple[Any, ...], float] = {}

    def fitness(genome: tuple[Any, ...]) -> float:
        if genome not in cache:
            fast, slow, band = genome
            cache[genome] = statistics.fmean(crossover(c, fast, slow, band).sharpe for c in series)
        return cache[genome]

    population = [_fix(tuple(_random_gene(rng, g) for g in GENES), days)
                  for _ in range(p["population"])]
    history: list[float] = []
    ranked: list[tuple[Any, ...]] = []
    for gen in range(p["generations"]):
        if ranked:  # breed the next generation from the last one, keeping its two best
            children: list[tuple[Any, ...]] = []
            while len(children) + 2 < p["population"]:
                a, b = _pick(rng, ranked, fitness), _pick(rng, ranked, fitness)
                child = tuple(x if rng.random() < 0.5 else y for x, y in zip(a, b, strict=True))
                child = tuple(_mutate(rng, gene, spec, p["mutation"])
                              for gene, spec in zip(child, GENES, strict=True))
                children.append(_fix(child, days))
            population = ranked[:2] + children
        ranked = sorted(population, key=fitness, reverse=True)
        history.append(r6(fitness(ranked[0])))
        ctx.progress(gen + 1, p["generations"], stage="evolving",
                     best_fitness=history[-1], best=_named(ranked[0]))
    best = ranked[0]
    return {"best": _named(best), "fitness": r6(fitness(best)), "history": history,
            "evaluations": len(cache), "tickers": len(series), "days": days}


def _random_gene(rng: random.Random, spec: tuple[Any, ...]) -> Any:
    _, low, high, kind = spec
    return rng.randint(low, high) if kind is int else rng.uniform(low, high)


def _mutate(rng: random.Random, gene: Any, spec: tuple[Any, ...], rate: float) -> Any:
    if rng.random() >= rate:
        return gene
    _, low, high, kind = spec
    step = rng.gauss(0.0, (high - low) / 8)
    value = min(high, max(low, gene + step))
    return round(value) if kind is int else round(value, 4)


def _fix(genome: tuple[Any, ...], days: int) -> tuple[Any, ...]:
    """Keep genomes valid: fast < slow, and the slow window fits the data."""
    fast, slow, band = genome
    slow = min(slow, max(3, days - 20))
    fast = min(fast, slow - 1)
    return (fast, slow, round(band, 4))


def _pick(rng: random.Random, ranked: list[tuple[Any, ...]], fitness: Any) -> tuple[Any, ...]:
    """Tournament selection of size 3."""
    return max(rng.sample(ranked, min(3, len(ranked))), key=fitness)


def _named(genome: tuple[Any, ...]) -> dict[str, Any]:
    return {name: value for (name, *_), value in zip(GENES, genome, strict=True)}
