"""A fixed route: always the same models, first one first."""

from __future__ import annotations

from typing import Any

from routers.serving.base import RouteContext, RoutingDecision


class FixedRouter:
    def __init__(self, models: list[str]):
        self._models = tuple(models)

    def route(self, body: dict[str, Any], ctx: RouteContext) -> RoutingDecision:
        return RoutingDecision(list(self._models))
