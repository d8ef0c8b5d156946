"""Replay a Zipf-distributed query stream through the real cache (MemoryState's cache ops), in
the setting of "On Optimal Caching and Model Multiplexing for Large Model Inference" (Zhu et al.
2023): two models whose prices differ by `cost_ratio`; a miss is paid, a hit is free.

Each distinct query has its own prompt and answer length (so its own cost and stored size) and
a flag saying whether the small model's answer is good enough. Without multiplexing every miss
goes to the large model. With multiplexing a router with `router_accuracy` picks the model: the
small one when it suffices, else the large one; picking the small one wrongly pays both (the
answer fails its check and is escalated). The eviction weight is what that query's miss costs
under the model the router picks, exactly as the gateway passes it to `ResponseCache.put`.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import asdict, dataclass

import numpy as np

from gateway.state.base import Eviction
from gateway.state.memory import MemoryState

EVICTIONS: tuple[Eviction, ...] = ("lru", "gdsf", "lec")
LARGE_USD_PER_TOKEN = 10 / 1_000_000  # a large hosted model, prompt and answer alike
ANSWER_OVERHEAD_BYTES = 350  # the JSON around the text: ids, usage, model, ...
BYTES_PER_TOKEN = 4


@dataclass(frozen=True, slots=True)
class SimConfig:
    queries: int = 10_000  # distinct queries
    requests: int = 100_000
    zipf_alpha: float = 0.9
    cost_ratio: float = 100.0  # large model price / small model price
    capacity: str = "1000"  # entries (a bare number, times the mean answer size) or bytes: 2MB
    small_ok: float = 0.5  # share of queries the small model answers well enough
    router_accuracy: float = 0.9
    seed: int = 0


@dataclass(frozen=True, slots=True)
class Workload:
    stream: np.ndarray  # query id of each request
    sizes: np.ndarray  # bytes of each query's stored answer
    cost_large: np.ndarray  # USD of a miss sent to the large model
    cost_mux: np.ndarray  # USD of a miss sent where the router picks
    max_bytes: int


@dataclass(frozen=True, slots=True)
class SimResult:
    eviction: str
    multiplexing: bool
    hits: int
    requests: int
    total_cost_usd: float

    @property
    def hit_rate(self) -> float:
        return self.hits / self.requests if self.requests else 0.0


@dataclass(frozen=True, slots=True)
class SimReport:
    config: SimConfig
    max_bytes: int
    no_cache_usd: dict[str, float]  # "without" / "with" multiplexing: every request paid
    results: list[SimResult]

    def baseline(self) -> SimResult:
        return next(r for r in self.results if r.eviction == "lru" and not r.multiplexing)

    def as_dict(self) -> dict[str, object]:
        base = self.baseline().total_cost_usd
        return {
            "config": asdict(self.config),
            "max_bytes": self.max_bytes,
            "no_cache_usd": self.no_cache_usd,
            "results": [
                {
                    **asdict(r),
                    "hit_rate": r.hit_rate,
                    "vs_lru_without_multiplexing": r.total_cost_usd / base if base else None,
                }
                for r in self.results
            ],
        }


_UNITS = {"b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3}


def parse_capacity(text: str, mean_entry_bytes: float) -> int:
    """Capacity text to bytes: "1000" is room for 1000 average answers; "64KB", "2MB" are bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmg]?b)?\s*", text.lower())
    if match is None:
        raise ValueError(f"capacity {text!r}: a number of entries, or bytes like 512KB or 2MB")
    number, unit = float(match.group(1)), match.group(2)
    size = number * _UNITS[unit] if unit else number * mean_entry_bytes
    return max(1, int(size))


def make_workload(cfg: SimConfig) -> Workload:
    rng = np.random.default_rng(cfg.seed)
    ranks = np.arange(1, cfg.queries + 1, dtype=np.float64)
    popularity = ranks**-cfg.zipf_alpha
    stream = rng.choice(cfg.queries, size=cfg.requests, p=popularity / popularity.sum())
    prompt_tokens = np.clip(rng.lognormal(np.log(150), 0.7, cfg.queries), 8, 8000)
    answer_tokens = np.clip(rng.lognormal(np.log(200), 0.8, cfg.queries), 4, 4000).astype(int)
    cost_large = (prompt_tokens + answer_tokens) * LARGE_USD_PER_TOKEN
    cost_small = cost_large / cfg.cost_ratio
    small_ok = rng.random(cfg.queries) < cfg.small_ok
    router_right = rng.random(cfg.queries) < cfg.router_accuracy
    picks_small = np.where(router_right, small_ok, ~small_ok)
    cost_mux = np.where(
        picks_small, np.where(small_ok, cost_small, cost_small + cost_large), cost_large
    )
    sizes = answer_tokens * BYTES_PER_TOKEN + ANSWER_OVERHEAD_BYTES
    max_bytes = parse_capacity(cfg.capacity, float(sizes.mean()))
    return Workload(stream, sizes, cost_large, cost_mux, max_bytes)


async def replay(workload: Workload, eviction: Eviction, multiplexing: bool) -> SimResult:
    """One pass over the stream through a fresh MemoryState: the store's own eviction code."""
    state = MemoryState()
    costs = (workload.cost_mux if multiplexing else workload.cost_large).tolist()
    answers = [b"x" * int(size) for size in workload.sizes]
    ttl_s = float(len(workload.stream) + 1)  # nothing expires: eviction alone decides
    hits, total = 0, 0.0
    for now, query in enumerate(workload.stream.tolist()):
        key = str(query)
        if await state.cache_get("sim", key, float(now)) is not None:
            hits += 1
            continue
        total += costs[query]
        await state.cache_put(
            "sim", key, answers[query], costs[query], eviction, workload.max_bytes, ttl_s, now
        )
    await state.aclose()
    return SimResult(eviction, multiplexing, hits, len(workload.stream), total)


async def _simulate(cfg: SimConfig) -> SimReport:
    workload = make_workload(cfg)
    results = [
        await replay(workload, eviction, multiplexing)
        for multiplexing in (False, True)
        for eviction in EVICTIONS
    ]
    no_cache = {
        "without": float(workload.cost_large[workload.stream].sum()),
        "with": float(workload.cost_mux[workload.stream].sum()),
    }
    return SimReport(cfg, workload.max_bytes, no_cache, results)


def simulate(cfg: SimConfig) -> SimReport:
    return asyncio.run(_simulate(cfg))
