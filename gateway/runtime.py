"""A loaded policy, ready to serve: its backends, price table and routers, built once.

Each request takes the current Runtime at its start and keeps it to the end, so a reload never
changes a request half-way.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import httpx

from cascades.base import Cascade
from gateway.admission.guard import AccessRules, access_rules, master_key
from gateway.backends.base import Backend, CallLimits
from gateway.backends.vllm_pool import EndpointReport, VllmPool
from gateway.state import State
from policies.learned_routes import router_dir
from policies.loader import PolicyError, Problem
from policies.pricing import CostFn, price_table
from policies.schema import (
    CascadeRoute,
    CostAwareRoute,
    EadRoute,
    ExperimentRoute,
    LearnedRoute,
    LitellmModel,
    Policy,
    RouteConfig,
    VllmModel,
)
from routers.serving.base import Learner, Router
from routers.serving.cost_aware import CostAwareRouter
from routers.serving.fixed import FixedRouter

T = TypeVar("T")

# Policy model name and config -> its Backend. None: vLLM pools and litellm, as configured; tests
# pass a fake (tests/support/fake_backend.py) to run the whole app with no upstream.
BackendFactory = Callable[[str, VllmModel | LitellmModel], Backend]


@dataclass
class Runtime:
    policy: Policy
    version: str  # short hash of the policy text
    source: str
    backends: dict[str, Backend]
    prices: dict[str, CostFn]
    routers: dict[str, Router]
    # Who may call what (policy `access` and the master key), worked out once per policy load.
    access: AccessRules
    # model -> timeouts and retries for its upstream calls: the model's own or the default.
    limits: dict[str, CallLimits] = field(default_factory=dict)
    # Routes whose answer may take several models (kind cascade or ead), by route name.
    cascades: dict[str, Cascade] = field(default_factory=dict)
    # Routes with an online layer (`online:`), by route name: feedback goes to them.
    learners: dict[str, Learner] = field(default_factory=dict)
    loaded_at: float = field(default_factory=time.time)

    def chain_for_model(self, name: str) -> list[str]:
        """A model asked for by name: it, then its declared fallbacks."""
        return [name, *self.policy.models[name].fallbacks]

    def healthy_models(self) -> list[str]:
        return [name for name, b in self.backends.items() if b.healthy()]

    def endpoint_reports(self) -> list[tuple[str, EndpointReport]]:
        """(model, endpoint) of every vLLM pool, with its load as the server reports it."""
        return [
            (name, report)
            for name, backend in self.backends.items()
            if isinstance(backend, VllmPool)
            for report in backend.endpoint_reports()
        ]

    def bind_state(self, state: State) -> None:
        """The shared store, for what learns from feedback (opened after the first policy)."""
        for learner in self.learners.values():
            bind = getattr(learner, "bind", None)
            if bind is not None:
                bind(state)

    async def start(self) -> None:
        await asyncio.gather(*(b.start() for b in self.backends.values()))

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.gather(*(b.aclose() for b in self.backends.values()))


def _backend(name: str, policy: Policy, client: httpx.AsyncClient) -> Backend:
    config = policy.models[name]
    if isinstance(config, LitellmModel):
        from gateway.backends.remote import LitellmBackend

        return LitellmBackend(name, config)
    return VllmPool(
        name,
        config,
        client,
        health_interval_s=policy.defaults.health_interval_s,
        cooldown_s=policy.defaults.cooldown_s,
        health_timeout_s=policy.defaults.health_timeout_s,
        unhealthy_after=policy.defaults.unhealthy_after,
        eject_after=policy.defaults.eject_after,
        metrics_interval_s=policy.defaults.metrics_interval_s,
    )


def load_learned_routers(policy: Policy, source: str) -> dict[str, Router]:
    """The learned routes' routers, artifacts loaded and warmed up. Slow (model loading): run it
    in a thread. A broken artifact is a PolicyError, so the old policy keeps serving."""
    from routers.predictors.contexts import load as load_contexts
    from routers.serving.learned import LearnedRouter, load_predictor
    from routers.serving.online import OnlineLayer

    prices = price_table(policy)
    out: dict[str, Router] = {}
    for name, route in policy.routes.items():
        if not isinstance(route, LearnedRoute):
            continue
        try:
            directory = router_dir(source, route.router)
            online = OnlineLayer(name, route.online) if route.online is not None else None
            router = LearnedRouter(
                route,
                load_predictor(directory),
                policy,
                prices,
                online=online,
                contexts=load_contexts(directory) if online is not None else None,
            )
            router.warm_up()
        except Exception as exc:
            problem = Problem(source, 1, 1, f"routes.{name}.router", f"cannot load: {exc}")
            raise PolicyError([problem]) from exc
        out[name] = router
    return out


def simple_router(route: RouteConfig, policy: Policy, prices: dict[str, CostFn]) -> Router:
    """The router of a route that needs no artifact: fixed or cost-aware (also what cascade and
    ead routes use to name their models)."""
    if isinstance(route, CostAwareRoute):
        qualities = {m: policy.models[m].quality or 0.0 for m in route.models}
        return CostAwareRouter(route, qualities, prices)
    return FixedRouter(route.models)


def policy_version(text: str) -> str:
    """Runtime.version: a short hash of the policy text as read from its file."""
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _or(own: T | None, default: T) -> T:
    return own if own is not None else default


def call_limits(policy: Policy) -> dict[str, CallLimits]:
    """model -> its timeouts and retries, each the model's own or the policy default."""
    d = policy.defaults
    out: dict[str, CallLimits] = {}
    for name, m in policy.models.items():
        timeout_s = _or(m.timeout_s, d.timeout_s)
        out[name] = CallLimits(
            timeout_s=timeout_s,
            retries=_or(m.retries, d.retries),
            connect_timeout_s=_or(m.connect_timeout_s, d.connect_timeout_s),
            first_byte_timeout_s=_or(m.first_byte_timeout_s, d.first_byte_timeout_s),
            stream_timeout_s=m.stream_timeout_s or d.stream_timeout_s or timeout_s,
            stream_idle_timeout_s=_or(m.stream_idle_timeout_s, d.stream_idle_timeout_s),
        )
    return out


def _cascade(
    name: str,
    route: RouteConfig,
    policy: Policy,
    prices: dict[str, CostFn],
    limits: dict[str, CallLimits],
) -> Cascade | None:
    if isinstance(route, CascadeRoute):
        from cascades.escalation import EscalationCascade

        return EscalationCascade(name, route, limits)
    if isinstance(route, EadRoute):
        from cascades.ead import EadCascade

        small = limits[route.small]
        return EadCascade(
            name,
            route,
            prices,
            small.timeout_s,
            small.retries,
            default_max_tokens=policy.defaults.max_tokens,
            limits=small,
        )
    return None


def build_runtime(
    policy: Policy,
    text: str,
    source: str,
    client: httpx.AsyncClient,
    learned: dict[str, Router] | None = None,
    backend_factory: BackendFactory | None = None,
) -> Runtime:
    """`learned`: the routers of learned routes, from `load_learned_routers`."""
    prices = price_table(policy)
    limits = call_limits(policy)
    learned = learned or {}
    return Runtime(
        access=access_rules(policy.access, master_key()),
        policy=policy,
        version=policy_version(text),
        source=source,
        backends={
            name: backend_factory(name, config)
            if backend_factory is not None
            else _backend(name, policy, client)
            for name, config in policy.models.items()
        },
        prices=prices,
        limits=limits,
        routers={
            name: learned[name] if name in learned else simple_router(route, policy, prices)
            for name, route in policy.routes.items()
            # An experiment routes nothing itself: admit hands the request to an arm.
            if not isinstance(route, ExperimentRoute)
        },
        cascades={
            name: cascade
            for name, route in policy.routes.items()
            if (cascade := _cascade(name, route, policy, prices, limits)) is not None
        },
        learners={
            name: online
            for name, router in learned.items()
            if (online := getattr(router, "online", None)) is not None
        },
    )
