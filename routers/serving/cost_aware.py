"""A cost-aware route from declared priors: each model's `quality` from the policy and its
expected cost from the price table. Learned routers replace the priors with predictions and
keep the same objective (`routers.serving.objective`)."""

from __future__ import annotations

from typing import Any

from policies.pricing import CostFn
from policies.schema import CostAwareRoute
from routers.serving.base import RouteContext, RoutingDecision, answers
from routers.serving.objective import rank_models


class CostAwareRouter:
    def __init__(
        self, config: CostAwareRoute, qualities: dict[str, float], prices: dict[str, CostFn]
    ):
        self._config = config
        self._qualities = {m: qualities[m] for m in config.models}
        self._prices = {m: prices.get(m) for m in config.models}

    def route(self, body: dict[str, Any], ctx: RouteContext) -> RoutingDecision:
        completion = int(
            body.get("max_tokens")
            or body.get("max_completion_tokens")
            or self._config.expected_output_tokens
        ) * answers(body)
        predictions: dict[str, dict[str, float]] = {}
        for model, quality in self._qualities.items():
            price = self._prices[model]
            cost = price(ctx.prompt_tokens, completion, None) if price is not None else 0.0
            predictions[model] = {"quality": quality, "cost_usd": cost}
        lam = self._config.lambda_ * ctx.price_multiplier
        return RoutingDecision(
            rank_models(predictions, lam, self._config.quality_floor), predictions
        )
