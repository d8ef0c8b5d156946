"""Route: the models to try for this request, in order, each with its upstream call, and the
route's cascade when it has one."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cascades.base import Cascade
from cascades.fallback import Attempt
from gateway.admission.access import typical_from_upper
from gateway.backends.base import Kind
from gateway.pipeline.context import RequestContext
from gateway.runtime import Runtime
from gateway.tokens import prompt_tokens_upper
from routers.serving.base import RouteContext, RoutingDecision


@dataclass(slots=True)
class Plan:
    """What the router chose; `attempts` may shrink when budgets are reserved."""

    models: list[str]  # the router's chain, in order
    attempts: list[Attempt]
    cascade: Cascade | None
    prompt_upper: int  # an upper bound on the prompt's tokens: budgets reserve on it


async def plan(
    runtime: Runtime,
    body: dict[str, Any],
    kind: Kind,
    route: str | None,
    ctx: RouteContext,
    headers: Mapping[str, str] | None = None,
) -> tuple[RoutingDecision, list[Attempt]]:
    """Router: the models to try, in order, each with its upstream call."""
    if route is None:
        decision = RoutingDecision(runtime.chain_for_model(body["model"]))
    else:
        routed = runtime.routers[route].route(body, ctx)
        # Learned routers score off the event loop and are awaited; the rest answer at once.
        decision = await routed if inspect.isawaitable(routed) else routed
    attempts = [
        Attempt(model, runtime.limits[model].call(kind, body, headers)) for model in decision.models
    ]
    return decision, attempts


async def route(ctx: RequestContext) -> Plan:
    """Pacing's price multiplier, then the router's decision; both noted for the headers."""
    rec, body, runtime = ctx.record, ctx.body, ctx.runtime
    multiplier = await ctx.services.pacers.multiplier(ctx.key, rec.route, ctx.config)
    # The prompt is walked once: budgets reserve on the bound, routers cost the typical.
    prompt_upper = prompt_tokens_upper(body)
    asked = RouteContext(rec.route or body["model"], multiplier, typical_from_upper(prompt_upper))
    decision, attempts = await plan(runtime, body, ctx.kind, rec.route, asked, ctx.headers)
    cascade = runtime.cascades.get(rec.route) if rec.route else None
    if multiplier != 1.0:
        ctx.notes.price_multiplier = multiplier
    if decision.predictions:
        ctx.notes.predictions = decision.predictions
    if decision.online is not None:
        ctx.notes.online = decision.online
    return Plan(decision.models, attempts, cascade, prompt_upper)
