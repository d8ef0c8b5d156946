"""What a vLLM server says about its own load: read from its Prometheus /metrics.

The gateway's own count of outstanding requests sees only this process; the server's gauges
see every client (other replicas, direct callers) and its KV cache. The metric names moved
between vLLM versions, so each figure has the names it went by, newest first:

- running, waiting: `vllm:num_requests_running`, `vllm:num_requests_waiting` (all versions);
- KV-cache usage (0..1): `vllm:kv_cache_usage_perc` (V1 engine, 0.10+, this repo's 0.32) or
  `vllm:gpu_cache_usage_perc` (V0 and early V1);
- prefix-cache hits and queries, in tokens, cumulative counters: `vllm:prefix_cache_hits` /
  `vllm:prefix_cache_queries` (exposed with `_total`; 0.10+) or `vllm:gpu_prefix_cache_hits` /
  `vllm:gpu_prefix_cache_queries` (early V1); V0 had only a ratio gauge,
  `vllm:gpu_prefix_cache_hit_rate`.

A server with several engines (data parallel) has one sample per engine: counts and counters
are summed, KV usage averaged. Parsing is prometheus_client's text parser.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

# figure -> the vLLM family names it went by, newest first (family names: no `_total`).
NAMES: dict[str, tuple[str, ...]] = {
    "running": ("vllm:num_requests_running",),
    "waiting": ("vllm:num_requests_waiting",),
    "kv_usage": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
    "prefix_hits": ("vllm:prefix_cache_hits", "vllm:gpu_prefix_cache_hits"),
    "prefix_queries": ("vllm:prefix_cache_queries", "vllm:gpu_prefix_cache_queries"),
    "prefix_hit_rate": ("vllm:gpu_prefix_cache_hit_rate",),  # V0's gauge
}
_AVERAGED = {"kv_usage", "prefix_hit_rate"}  # per-engine ratios; the rest are sums
_WANTED = {name for names in NAMES.values() for name in names}


class NotVllmMetrics(ValueError):
    """A /metrics page that holds none of vLLM's names (another kind of server)."""


class MalformedMetrics(NotVllmMetrics):
    """A /metrics page that is not Prometheus text."""


@dataclass(slots=True, frozen=True)
class EngineState:
    """One read of an endpoint's /metrics. Empty (all None, `read_at` None) until a read
    succeeds, and for servers with no vLLM /metrics (remote or other servers)."""

    running: float | None = None  # requests in the running batch
    waiting: float | None = None  # requests queued for a batch slot
    kv_usage: float | None = None  # KV-cache blocks in use, 0..1
    prefix_hits: float | None = None  # prompt tokens served from the prefix cache, since start
    prefix_queries: float | None = None  # prompt tokens looked up in it, since start
    # Since the server started (hits / queries; V0: its own gauge).
    prefix_hit_rate: float | None = None
    # Over the tokens queried since the previous read; None when none were.
    recent_prefix_hit_rate: float | None = None
    read_at: float | None = None  # time.time() of the read
    names: tuple[str, ...] = ()  # the vLLM metric families it was read from

    @property
    def empty(self) -> bool:
        return self.read_at is None


def parse_engine_state(
    text: str, read_at: float, previous: EngineState | None = None
) -> EngineState:
    """The figures in a /metrics page. `previous`: the last read of the same endpoint, for the
    recent hit rate (a counter that went down means the server restarted: no recent rate).
    Raises MalformedMetrics for text the parser refuses, NotVllmMetrics for one with no vLLM
    figure in it."""
    totals: dict[str, float] = {}  # vLLM name -> the sum of its samples
    counts: dict[str, int] = {}  # vLLM name -> its samples
    try:
        for family in text_string_to_metric_families(text):
            # Untyped pages keep the suffix in the family name; they also come as one family
            # per sample, so families of one name are added up, not replaced.
            name = family.name.removesuffix("_total")
            if name not in _WANTED:
                continue
            for sample in family.samples:
                # Counters also expose `_created`; only the value samples count.
                if sample.name in (name, name + "_total") and not math.isnan(sample.value):
                    totals[name] = totals.get(name, 0.0) + sample.value
                    counts[name] = counts.get(name, 0) + 1
    except (ValueError, TypeError, IndexError) as exc:  # what the parser raises on bad text
        raise MalformedMetrics(f"not Prometheus text: {exc}") from exc
    sums: dict[str, float] = {}
    names: list[str] = []
    for figure, candidates in NAMES.items():
        # The newest name a page has (a page in transition may have both).
        name = next((n for n in candidates if n in counts), None)
        if name is None:
            continue
        total = totals[name]
        sums[figure] = total / counts[name] if figure in _AVERAGED else total
        names.append(name)
    if not names:
        raise NotVllmMetrics("no vLLM metric in it")
    hits, queries = sums.get("prefix_hits"), sums.get("prefix_queries")
    rate = sums.get("prefix_hit_rate")
    if rate is None and hits is not None and queries:
        rate = hits / queries
    return EngineState(
        running=sums.get("running"),
        waiting=sums.get("waiting"),
        kv_usage=sums.get("kv_usage"),
        prefix_hits=hits,
        prefix_queries=queries,
        prefix_hit_rate=rate,
        recent_prefix_hit_rate=_recent_rate(hits, queries, previous),
        read_at=read_at,
        names=tuple(sorted(names)),
    )


def _recent_rate(
    hits: float | None, queries: float | None, previous: EngineState | None
) -> float | None:
    if hits is None or queries is None or previous is None:
        return None
    if previous.prefix_hits is None or previous.prefix_queries is None:
        return None
    d_hits, d_queries = hits - previous.prefix_hits, queries - previous.prefix_queries
    if d_queries <= 0 or d_hits < 0:  # nothing asked since, or the server restarted
        return None
    return d_hits / d_queries


@dataclass(slots=True, frozen=True)
class EndpointReport:
    """One endpoint as /metrics and the dashboard show it."""

    endpoint: str  # base URL
    usable: bool  # healthy and not ejected
    outstanding: int  # requests from this gateway process in flight on it
    status: str  # of its /metrics: unread | ok | absent | malformed | unreachable
    engine: EngineState
