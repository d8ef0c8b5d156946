"""`routegate cache simulate`: the Zipf replay through the real cache, via the CLI."""

from __future__ import annotations

import dataclasses

import orjson
from typer.testing import CliRunner

from gateway.cache.replay import SimConfig, parse_capacity, simulate
from gateway.cli import app

SMALL = ["--queries", "2000", "--requests", "20000", "--capacity", "200", "--seed", "3"]


def test_simulate_prints_the_table() -> None:
    result = CliRunner().invoke(app, ["cache", "simulate", *SMALL], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    for word in ("LRU", "GDSF", "LEC", "without", "with", "hit rate", "vs LRU without", "1.000"):
        assert word in result.output
    assert "cost ratio 100" in result.output


def test_cost_aware_eviction_with_multiplexing_beats_lru_without() -> None:
    result = CliRunner().invoke(app, ["cache", "simulate", *SMALL, "--json"])
    assert result.exit_code == 0, result.output
    report = orjson.loads(result.output)
    cost = {(r["eviction"], r["multiplexing"]): r["total_cost_usd"] for r in report["results"]}
    assert len(cost) == 6
    lru_without = cost["lru", False]
    assert cost["gdsf", True] < lru_without
    assert cost["lec", True] < lru_without
    # Each ingredient helps on its own too: multiplexing for every policy, and cost-aware
    # eviction over LRU once misses differ in price.
    for eviction in ("lru", "gdsf", "lec"):
        assert cost[eviction, True] < cost[eviction, False]
    assert cost["gdsf", True] < cost["lru", True]
    assert cost["lec", True] < cost["lru", True]
    # A cache never costs more than no cache.
    assert max(c for (_, mux), c in cost.items() if not mux) < report["no_cache_usd"]["without"]


def test_simulation_is_deterministic_per_seed() -> None:
    cfg = SimConfig(queries=500, requests=3000, capacity="64KB", seed=11)
    assert simulate(cfg).as_dict() == simulate(cfg).as_dict()
    assert simulate(cfg).as_dict() != simulate(dataclasses.replace(cfg, seed=12)).as_dict()


def test_capacity_is_entries_or_bytes() -> None:
    assert parse_capacity("100", 1000.0) == 100_000
    assert parse_capacity("64KB", 1000.0) == 65_536
    assert parse_capacity("2MB", 1.0) == 2 * 1024 * 1024
    result = CliRunner().invoke(app, ["cache", "simulate", "--capacity", "lots"])
    assert result.exit_code != 0
    assert "capacity" in result.output
