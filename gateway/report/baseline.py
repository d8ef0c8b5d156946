"""The counterfactual: what each request would have cost on a baseline model.

By default a route's baseline is its dearest model at the policy's prices (the "always send it
to the strongest model" gateway the router replaces); `--baseline MODEL` names one for every
route. A row is priced with the same price table on its own prompt and completion tokens.
Requests outside the policy's routes (a model asked for by name, a route since removed) had no
routing decision, so they count at their actual cost."""

from __future__ import annotations

from typing import Any

from gateway.report.load import ReportError
from policies.pricing import CostFn, price_table
from policies.schema import Policy

_REFERENCE_TOKENS = 1_000_000  # "dearest" compares one million prompt plus completion tokens


def _dearness(price: CostFn) -> float:
    return price(_REFERENCE_TOKENS, _REFERENCE_TOKENS, None)


class Baselines:
    def __init__(self, policy: Policy, model: str | None = None):
        self.prices = price_table(policy)
        if model is not None and model not in self.prices:
            known = ", ".join(sorted(self.prices))
            raise ReportError(f"--baseline {model!r}: not a priced model of the policy ({known})")
        self.by_route: dict[str, str] = {}
        for name, route in policy.routes.items():
            if model is not None:
                self.by_route[name] = model
                continue
            priced = [m for m in route.models if m in self.prices]
            if priced:
                # max() keeps the first of equals: the route's own order breaks ties.
                self.by_route[name] = max(priced, key=lambda m: _dearness(self.prices[m]))

    def model_for(self, route: str | None) -> str | None:
        return self.by_route.get(route) if route else None

    def cost(self, row: dict[str, Any]) -> float:
        model = self.model_for(row["route"])
        if model is None:
            return row["cost_usd"] or 0.0
        return self.prices[model](row["prompt_tokens"] or 0, row["completion_tokens"] or 0, None)

    def quality(self, row: dict[str, Any]) -> tuple[float, float] | None:
        """(chosen model's, baseline's) predicted quality, from a learned route's predictions."""
        model = self.model_for(row["route"])
        predictions = row["extra"].get("predictions")
        if model is None or not isinstance(predictions, dict):
            return None
        chosen, base = predictions.get(row["model"]), predictions.get(model)
        if not isinstance(chosen, dict) or not isinstance(base, dict):
            return None
        if "quality" not in chosen or "quality" not in base:
            return None
        return float(chosen["quality"]), float(base["quality"])
