"""`plan: learned`: a key's or route's spend plan learned from one past sample, the previous
period's traffic shape in the request log ("Robust Budget Pacing with a Single Sample").

The previous window (yesterday, last week, last month) is cut into equal slices; each slice's
spend (its request count when nothing was spent) is its weight. The shape is mixed with
uniform, `w = (1 - MIX) * shape + MIX * uniform`: one sample is noisy, and a slice that was
empty last time must still get some budget this time (the robustness the paper argues for).
No rows in the previous window: no weights, and the plan is uniform.

Read once per (owner, window) per process, off the event loop; the controller gets the weights
as a custom plan, so its step stays pure.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

from gateway.accounting.log_store import open_reader
from gateway.admission.periods import period_bounds

MIX = 0.15  # share of the uniform plan mixed into the learned shape
SLICES = {"day": 24, "week": 7 * 24, "month": 31 * 4}  # hours; hours; quarter days


def shape_weights(spend: list[float], counts: list[int], mix: float = MIX) -> list[float] | None:
    """Plan weights from a past window's per-slice spend (or counts when spend is all zero);
    None when the window had no traffic."""
    shape = spend if sum(spend) > 0 else [float(c) for c in counts]
    total = sum(shape)
    if total <= 0:
        return None
    n = len(shape)
    return [(1 - mix) * s / total + mix / n for s in shape]


def previous_window(period: str, now: float) -> tuple[float, float]:
    start, _ = period_bounds(period, now)
    prev_start, _ = period_bounds(period, start.timestamp() - 1)
    return prev_start.timestamp(), start.timestamp()


def read_shape(
    log: str | Path, column: str, owner: str, start: float, end: float, slices: int
) -> tuple[list[float], list[int]]:
    """Per-slice spend and request count of `owner` (a route or key id) in [start, end), from
    the log at `log` (a SQLite path or a Postgres URL)."""
    spend, counts = [0.0] * slices, [0] * slices
    for i, cost, count in open_reader(log).shape(column, owner, start, end, slices):
        if 0 <= i < slices:
            spend[i], counts[i] = cost, count
    return spend, counts


@dataclass(slots=True)
class LearnedPlans:
    """Learned plan weights per (owner, window), read from the request log when first asked."""

    log_path: str | Path | None  # a SQLite path or a Postgres URL
    _cache: dict[tuple[str, str, float], list[float] | None] = field(default_factory=dict)

    async def weights(self, kind: str, owner: str, period: str, now: float) -> list[float] | None:
        """`kind` is "route" or "key"; None: no history (plan uniform)."""
        if self.log_path is None:
            return None
        start, end = previous_window(period, now)
        key = (kind, owner, start)
        if key not in self._cache:
            column = "route" if kind == "route" else "api_key_id"
            spend, counts = await asyncio.to_thread(
                read_shape, self.log_path, column, owner, start, end, SLICES[period]
            )
            if len(self._cache) > 1024:  # windows roll over: forget the old ones
                self._cache.clear()
            self._cache[key] = shape_weights(spend, counts)
        return self._cache[key]
