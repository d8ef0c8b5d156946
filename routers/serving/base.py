"""The route interface: given a request, which models to try, in order.

Fixed routes live here now; learned routers (complexity, graph) implement the same interface.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(slots=True)
class RoutingDecision:
    models: list[str]  # first choice, then fallbacks in order
    # Per-model predictions behind the choice, e.g. {"m": {"quality": .8, "cost_usd": 1e-4}}.
    predictions: dict[str, dict[str, float]] = field(default_factory=dict)
    # An online layer's notes: {"context", "explored", "offline": {model: quality}}.
    online: dict[str, Any] | None = None


@dataclass(slots=True)
class RouteContext:
    route: str
    price_multiplier: float = 1.0  # lambda from budget pacing; 1.0 when no pacing applies
    prompt_tokens: int = 0  # an estimate of the prompt's length, for cost predictions


class Router(Protocol):
    def route(
        self, body: dict[str, Any], ctx: RouteContext
    ) -> RoutingDecision | Awaitable[RoutingDecision]:
        """Cheap routers answer directly; heavy ones (learned) return an awaitable and score
        off the event loop."""


class Learner(Protocol):
    """A route that learns from feedback (an online layer): `online` is what the route noted
    on the request (the request log's extra["online"]), `model` the model the score is about."""

    async def learn(self, model: str, online: Mapping[str, Any], score: float) -> None: ...


def answers(body: Mapping[str, Any]) -> int:
    """How many answers the request asks for (`n`): each is paid for, so each is costed."""
    n = body.get("n")
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 1 else 1
