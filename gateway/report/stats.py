"""One group's figures, accumulated row by row.

Money is summed exactly (Shewchuk's partials, the algorithm behind math.fsum), so a report's
total equals the sum of its rows' costs to the last bit, however many rows there are."""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass, field
from typing import Any

from gateway.percentiles import percentile


class ExactSum:
    """A running float sum with no rounding error until `value()` rounds once.

    Values are buffered and folded, a few thousand at a time, into non-overlapping partials
    whose sum is exactly the sum so far: math.fsum (C) does the work, so a row costs a list
    append."""

    __slots__ = ("_buffer", "_partials")
    _FOLD_AT = 4096

    def __init__(self) -> None:
        self._partials: list[float] = []
        self._buffer: list[float] = []

    def add(self, x: float) -> None:
        self._buffer.append(x)
        if len(self._buffer) >= self._FOLD_AT:
            self._fold()

    def _fold(self) -> None:
        values = self._partials + self._buffer
        parts: list[float] = []
        # Each pass takes the correctly rounded rest of the exact sum; the rest shrinks by
        # ~2^-53 a pass and lies on the inputs' finite binary grid, so it reaches zero.
        while rest := math.fsum([*values, *(-p for p in parts)]):
            parts.append(rest)
        self._partials, self._buffer = parts, []

    def value(self) -> float:
        self._fold()
        return math.fsum(self._partials)


def _escalations(extra: dict[str, Any]) -> int:
    """A cascade's escalations, or its steps beyond the first where only those are logged."""
    if "escalations" in extra:
        return int(extra["escalations"] or 0)
    steps = extra.get("steps")
    return max(len(steps) - 1, 0) if isinstance(steps, list) else 0


def escalated(extra: dict[str, Any]) -> bool | None:
    """Whether a cascade escalated; None for a row that went through no cascade."""
    if "escalations" in extra or "steps" in extra:
        return _escalations(extra) > 0
    return None


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _mean(total: ExactSum, n: int) -> float | None:
    return total.value() / n if n else None


@dataclass
class GroupStats:
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # of prompt_tokens, read from the upstreams' prefix caches
    prompt_cache_saved: ExactSum = field(default_factory=ExactSum)
    cost: ExactSum = field(default_factory=ExactSum)
    baseline_cost: ExactSum = field(default_factory=ExactSum)
    latencies: array[float] = field(default_factory=lambda: array("d"))
    cache_lookups: int = 0
    cache_hits: int = 0
    cache_saved: ExactSum = field(default_factory=ExactSum)
    cascade_rows: int = 0
    escalated_rows: int = 0
    ead_rows: int = 0
    switched_rows: int = 0
    quality_rows: int = 0
    quality: ExactSum = field(default_factory=ExactSum)
    baseline_quality: ExactSum = field(default_factory=ExactSum)

    def add(self, row: dict[str, Any], baseline_cost: float, quality: tuple[float, float] | None):
        """`quality`: (chosen model's, baseline's) predicted quality, when the row has both."""
        extra = row["extra"]
        self.requests += 1
        self.errors += row["status"] >= 400
        self.prompt_tokens += row["prompt_tokens"] or 0
        self.completion_tokens += row["completion_tokens"] or 0
        self.cached_tokens += row.get("cached_tokens") or 0
        self.prompt_cache_saved.add(float(extra.get("prompt_cache_saved_usd") or 0.0))
        self.cost.add(row["cost_usd"] or 0.0)
        self.baseline_cost.add(baseline_cost)
        if row["latency_ms"] is not None:
            self.latencies.append(row["latency_ms"])
        cache = extra.get("cache")
        if isinstance(cache, dict):
            self.cache_lookups += 1
            if cache.get("hit"):
                self.cache_hits += 1
                self.cache_saved.add(float(cache.get("saved_usd") or 0.0))
        went_up = escalated(extra)
        if went_up is not None:
            self.cascade_rows += 1
            self.escalated_rows += went_up
        if "switches" in extra:
            self.ead_rows += 1
            self.switched_rows += (extra["switches"] or 0) > 0
        if quality is not None:
            self.quality_rows += 1
            self.quality.add(quality[0])
            self.baseline_quality.add(quality[1])

    def summary(self) -> dict[str, Any]:
        """Exact figures (no display rounding); rates are None where nothing applies."""
        cost, baseline = self.cost.value(), self.baseline_cost.value()
        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": _rate(self.errors, self.requests),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "tokens": self.prompt_tokens + self.completion_tokens,
            "cached_tokens": self.cached_tokens,
            "cached_token_rate": _rate(self.cached_tokens, self.prompt_tokens),
            # Cost at the full input price, less what was charged with cache reads priced.
            "prompt_cache_saved_usd": self.prompt_cache_saved.value(),
            "cost_usd": cost,
            "latency_p50_ms": percentile(self.latencies, 50),
            "latency_p95_ms": percentile(self.latencies, 95),
            "cache_lookups": self.cache_lookups,
            "cache_hits": self.cache_hits,
            "cache_hit_rate": _rate(self.cache_hits, self.cache_lookups),
            "cache_saved_usd": self.cache_saved.value(),
            "cascade_requests": self.cascade_rows,
            "escalation_rate": _rate(self.escalated_rows, self.cascade_rows),
            "ead_requests": self.ead_rows,
            "switching_rate": _rate(self.switched_rows, self.ead_rows),
            "baseline_cost_usd": baseline,
            "savings_usd": baseline - cost,
            "savings_rate": (baseline - cost) / baseline if baseline > 0 else None,
            "quality_requests": self.quality_rows,
            "predicted_quality": _mean(self.quality, self.quality_rows),
            "baseline_predicted_quality": _mean(self.baseline_quality, self.quality_rows),
        }
