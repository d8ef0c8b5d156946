"""The online layer of a learned route: it corrects the offline router's predicted quality
from live feedback, and explores a little, so a route follows traffic it was not trained on
and models that change under it.

Per (context, model), where the context is the query's cluster (routers/predictors/contexts.py),
it keeps a discounted running mean of the residual `feedback - offline prediction`; a global
cell per model (context "*") pools every context, and a context's estimate shrinks toward it:

    r_model = total_* / (weight_* + prior_weight)
    r_ctx   = (total_c + prior_weight * r_model) / (weight_c + prior_weight)
    quality = clip(offline + r_ctx, 0, 1)

Each observation multiplies the older ones' weight by `discount` (a soft sliding window), so a
model that degrades is noticed within a few dozen of its answers. On a share `explore` of
requests the choice uses a Thompson sample, quality ~ N(quality, noise^2 / (weight_c +
prior_weight)), instead of the mean; when the route sets a quality floor, exploration never
picks a model whose mean falls below it. Cost is weighed as everywhere: lambda times pacing's
multiplier (the budget's dual price), so learning never outspends a budget.

The state lives in the shared store (`State.stats_update`/`stats_read`): replicas learn
together. A replica reads the whole table every `refresh_s` in the background; an update is
one atomic O(1) script, made off the request path (feedback arrives on its own request).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gateway.state.base import RunningStat, State
from policies.schema import OnlineConfig
from routers.serving.objective import rank_models

log = logging.getLogger("routegate.online")

GLOBAL = "*"  # the context cell that pools every context of a model


def cell(context: int | str, model: str) -> str:
    return f"{context}|{model}"


@dataclass(slots=True)
class Corrections:
    """A snapshot of what the layer learned: cell -> RunningStat, and the pure arithmetic
    over it (shared by the gateway and bench/online_learning.py)."""

    config: OnlineConfig
    cells: dict[str, RunningStat] = field(default_factory=dict)
    # (context, model) -> (residual, sd), worked out once per snapshot: a request only adds.
    _memo: dict[tuple[int, str], tuple[float, float]] = field(default_factory=dict)

    def residual(self, context: int, model: str) -> tuple[float, float]:
        """(the learned correction of the offline prediction, its standard deviation)."""
        memo = self._memo.get((context, model))
        if memo is not None:
            return memo
        n0 = self.config.prior_weight
        g = self.cells.get(cell(GLOBAL, model))
        r_model = g.total / (g.weight + n0) if g is not None else 0.0
        c = self.cells.get(cell(context, model))
        weight, total = (c.weight, c.total) if c is not None else (0.0, 0.0)
        memo = ((total + n0 * r_model) / (weight + n0), self.config.noise / math.sqrt(weight + n0))
        self._memo[(context, model)] = memo
        return memo

    def corrected(self, context: int, model: str, offline: float) -> tuple[float, float]:
        """(corrected mean quality, its standard deviation for Thompson sampling)."""
        r, sd = self.residual(context, model)
        return min(1.0, max(0.0, offline + r)), sd

    def observe(self, context: int, model: str, offline: float, score: float, now: float) -> None:
        """The update the store applies, for an in-process copy (the bench)."""
        residual = score - offline
        for name in (cell(context, model), cell(GLOBAL, model)):
            old = self.cells.get(name, RunningStat())
            self.cells[name] = old.updated(residual, self.config.discount, now)
        self._memo.clear()


@dataclass(slots=True)
class OnlineChoice:
    """What the layer decided for one request."""

    models: list[str]  # best first
    predictions: dict[str, dict[str, float]]  # corrected quality and cost, per model
    explored: bool  # the Thompson sample chose differently from the mean


def choose(
    corrections: Corrections,
    context: int,
    offline: Mapping[str, Mapping[str, float]],
    lam: float,
    quality_floor: float | None,
    rng: np.random.Generator,
    lead: tuple[str, float] | None = None,
) -> OnlineChoice:
    """Rank the models on corrected quality; on a share of requests, on a Thompson sample."""
    mean: dict[str, dict[str, float]] = {}
    spread: dict[str, float] = {}
    for model, p in offline.items():
        q, sd = corrections.corrected(context, model, p["quality"])
        # Keep the offline entry's other fields (its prior: `policy simulate` replays a lead).
        mean[model] = {**p, "quality": q}
        spread[model] = sd
    greedy = rank_models(mean, lam, quality_floor, lead)
    if corrections.config.explore <= 0 or rng.random() >= corrections.config.explore:
        return OnlineChoice(greedy, mean, explored=False)
    sampled: dict[str, dict[str, float]] = {}
    for model, p in mean.items():
        q = p["quality"] + spread[model] * float(rng.standard_normal())
        if quality_floor is not None:
            # A sample must not lift a model over the floor, nor push one under it.
            if p["quality"] < quality_floor:
                q = min(q, quality_floor - 1e-9)
            else:
                q = max(q, quality_floor)
        sampled[model] = {"quality": q, "cost_usd": p["cost_usd"]}
    order = rank_models(sampled, lam, quality_floor, lead)
    return OnlineChoice(order, mean, explored=order[0] != greedy[0])


class OnlineLayer:
    """One learned route's layer in the gateway: a `routers.serving.base.Learner`."""

    def __init__(self, route: str, config: OnlineConfig, seed: int | None = None):
        self.route = route
        self.config = config
        self.table = f"online:{route}"
        self.snapshot = Corrections(config)
        self._rng = np.random.default_rng(seed)
        self._state: State | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._read_at = 0.0

    def bind(self, state: State) -> None:
        """The shared store (opened after the policy is loaded)."""
        self._state = state

    def choose(
        self,
        context: int,
        offline: Mapping[str, Mapping[str, float]],
        lam: float,
        quality_floor: float | None,
        lead: tuple[str, float] | None = None,
    ) -> OnlineChoice:
        self._refresh_soon()
        return choose(self.snapshot, context, offline, lam, quality_floor, self._rng, lead)

    async def learn(self, model: str, online: Mapping[str, Any], score: float) -> None:
        """One feedback score about `model` on a request this layer noted (its `online`)."""
        if self._state is None:
            return
        offline = (online.get("offline") or {}).get(model)
        if offline is None:  # the model was not a candidate of this route
            return
        residual = float(score) - float(offline)
        now = time.time()
        context = int(online.get("context", 0))
        cells = [cell(context, model), cell(GLOBAL, model)]
        await self._state.stats_update(self.table, cells, residual, self.config.discount, now)

    async def refresh(self) -> None:
        """Read what every replica learned."""
        if self._state is not None:
            self.snapshot = Corrections(self.config, await self._state.stats_read(self.table))

    def _refresh_soon(self) -> None:
        # Called on the event loop by each request; the read itself runs as a task of its own.
        now = time.monotonic()
        if self._state is None or now - self._read_at < self.config.refresh_s:
            return
        if self._refresher is not None and not self._refresher.done():
            return
        self._read_at = now
        self._refresher = asyncio.get_running_loop().create_task(self._refresh_logged())

    async def _refresh_logged(self) -> None:
        try:
            await self.refresh()
        except Exception as exc:  # a store outage must not fail requests: keep the old snapshot
            log.warning("online layer %s: reading its state failed: %s", self.route, exc)
