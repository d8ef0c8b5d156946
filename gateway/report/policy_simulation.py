"""Replay traffic through a policy offline: where it would route, and what it would cost.

Two kinds of data:

- routing records (JSONL, routers/records.py): each query goes through one route's real router
  (fixed, cost_aware, learned) as a chat request; the cost is the chosen model's price times the
  record's tokens, and where the records hold the chosen model's answer its quality is averaged.
- a request log (SQLite): the prompt text is not logged, so each row is routed from its route's
  configuration and its token counts. Fixed routes take their first model; cost_aware routes
  rank by the policy's qualities and prices; learned routes re-rank the predictions the row
  carries (`extra.predictions`) at this policy's prices, lambda and floor; cascades ask as many
  models as the row's cascade did; EAD splits the completion by the row's large-token share.

No model is called. Cascade confidence cannot be replayed from records, so a cascade route there
is answered by its first model.
"""

from __future__ import annotations

import asyncio
import inspect
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.accounting.log_store import is_postgres_url
from gateway.report.stats import ExactSum
from policies.pricing import CostFn, price_table
from policies.schema import (
    CascadeRoute,
    CostAwareRoute,
    EadRoute,
    ExperimentRoute,
    LearnedRoute,
    Policy,
    RouteConfig,
)
from routers.serving.base import RouteContext, Router, RoutingDecision
from routers.serving.cost_aware import CostAwareRouter
from routers.serving.objective import lead_of, rank_models

BY_NAME = "(model by name)"  # log rows that asked for a model, not a route
SQLITE_MAGIC = b"SQLite format 3\x00"
CONCURRENT_QUERIES = 256  # learned routers batch what is submitted together


class SimulationError(ValueError):
    """Data or a route the simulation cannot use; the message is for the user."""


@dataclass
class RouteOutcome:
    requests: int = 0
    mix: Counter[str] = field(default_factory=Counter)  # answering model -> requests
    cost: ExactSum = field(default_factory=ExactSum)
    quality: ExactSum = field(default_factory=ExactSum)
    quality_n: int = 0  # requests whose chosen model has a known (or predicted) quality
    unpriced: int = 0  # requests whose chosen model has no price in the policy

    def add(self, model: str, cost: float | None, quality: float | None = None) -> None:
        self.requests += 1
        self.mix[model] += 1
        if cost is None:
            self.unpriced += 1
        else:
            self.cost.add(cost)
        if quality is not None:
            self.quality.add(quality)
            self.quality_n += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "mix": dict(self.mix.most_common()),
            "cost_usd": self.cost.value(),
            "mean_quality": self.quality.value() / self.quality_n if self.quality_n else None,
            "quality_requests": self.quality_n,
            "unpriced_requests": self.unpriced,
        }


@dataclass
class Simulation:
    source: str  # the policy file
    data_kind: str  # "records" or "log"
    routes: dict[str, RouteOutcome] = field(default_factory=dict)
    skipped: int = 0  # rows naming a route or model this policy lacks
    notes: list[str] = field(default_factory=list)

    def outcome(self, route: str) -> RouteOutcome:
        return self.routes.setdefault(route, RouteOutcome())

    def total_cost(self) -> float:
        total = ExactSum()
        for outcome in self.routes.values():
            total.add(outcome.cost.value())
        return total.value()

    def as_dict(self) -> dict[str, Any]:
        return {
            "policy": self.source,
            "data": self.data_kind,
            "routes": {name: o.as_dict() for name, o in sorted(self.routes.items())},
            "total_cost_usd": self.total_cost(),
            "skipped": self.skipped,
            "notes": self.notes,
        }


def is_request_log(path: str | Path) -> bool:
    """A SQLite request log (by its magic bytes) or a Postgres URL (routing records: JSONL)."""
    if is_postgres_url(path):
        return True
    path = Path(path)
    try:
        with path.open("rb") as f:
            return f.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC
    except OSError as exc:
        raise SimulationError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _price(prices: dict[str, CostFn], model: str, prompt: float, completion: float) -> float | None:
    fn = prices.get(model)
    return None if fn is None else fn(prompt, completion, None)  # type: ignore[arg-type]


# ---------------------------------------------------------------- routing records


def _router_for(policy: Policy, source: str, name: str, route: RouteConfig) -> Router:
    """The router the gateway would build for the route (gateway/runtime.py)."""
    from gateway.runtime import load_learned_routers, simple_router

    if isinstance(route, LearnedRoute):
        # Only this route: loading a learned router loads its embedding model.
        only = policy.model_copy(update={"routes": {name: route}})
        return load_learned_routers(only, source)[name]
    return simple_router(route, policy, price_table(policy))


async def _decide(router: Router, body: dict[str, Any], ctx: RouteContext) -> RoutingDecision:
    decision = router.route(body, ctx)
    return await decision if inspect.isawaitable(decision) else decision


async def _route_queries(
    router: Router, route: str, queries: list[tuple[str, int]]
) -> list[RoutingDecision]:
    decisions: list[RoutingDecision] = []
    for start in range(0, len(queries), CONCURRENT_QUERIES):
        chunk = queries[start : start + CONCURRENT_QUERIES]
        decisions += await asyncio.gather(
            *(
                _decide(
                    router,
                    {"model": route, "messages": [{"role": "user", "content": text}]},
                    RouteContext(route, 1.0, tokens),
                )
                for text, tokens in chunk
            )
        )
    return decisions


def simulate_records(
    policy: Policy, source: str, records_path: Path, route: str | None = None
) -> Simulation:
    from routers.records import RecordError, load_records

    name = route or next(iter(policy.routes), None)
    if name is None or name not in policy.routes:
        known = ", ".join(policy.routes) or "none"
        raise SimulationError(f"{source}: no route {name!r} to simulate (routes: {known})")
    config = policy.routes[name]
    if isinstance(config, ExperimentRoute):
        arms = ", ".join(config.arms)
        raise SimulationError(
            f"{source}: {name} is an experiment; simulate one of its arms ({arms})"
        )
    try:
        records = load_records(records_path)
    except RecordError as exc:
        raise SimulationError(str(exc)) from None
    by_query: dict[str, dict[str, Any]] = {}
    for r in records:
        q = by_query.setdefault(r.query_id, {"text": r.query, "tokens": r.input_tokens, "by": {}})
        q["by"][r.model] = r
    queries = list(by_query.values())
    router = _router_for(policy, source, name, config)
    decisions = asyncio.run(
        _route_queries(router, name, [(q["text"], q["tokens"]) for q in queries])
    )

    prices = price_table(policy)
    model_map = config.model_map if isinstance(config, LearnedRoute) else {}
    sim = Simulation(source, "records")
    if isinstance(config, CascadeRoute | EadRoute):
        sim.notes.append(f"{name}: {config.kind} confidence is not replayable; first model only")
    outcome = sim.outcome(name)
    for q, decision in zip(queries, decisions, strict=True):
        chosen = decision.models[0]
        record = q["by"].get(model_map.get(chosen, chosen))
        # Without the chosen model's record, the query's first record gives the answer length.
        output = (record or next(iter(q["by"].values()))).output_tokens
        outcome.add(
            chosen,
            _price(prices, chosen, q["tokens"], output),
            record.quality if record is not None else None,
        )
    return sim


# ---------------------------------------------------------------- request log


class _LogRouter:
    """Routes a logged row from its route's configuration and token counts."""

    def __init__(self, policy: Policy):
        self.policy = policy
        self.prices = price_table(policy)
        self._cost_aware = {
            name: CostAwareRouter(
                route, {m: policy.models[m].quality or 0.0 for m in route.models}, self.prices
            )
            for name, route in policy.routes.items()
            if isinstance(route, CostAwareRoute)
        }

    def _learned(self, route: LearnedRoute, row: dict[str, Any]) -> tuple[str, float | None]:
        predictions = row["extra"].get("predictions")
        prompt = row["prompt_tokens"] or 0
        if isinstance(predictions, dict) and all(
            isinstance(predictions.get(m), dict) and "quality" in predictions[m]
            for m in route.models
        ):
            scored = {
                m: {
                    "quality": float(predictions[m]["quality"]),
                    "cost_usd": _price(self.prices, m, prompt, route.expected_output_tokens) or 0.0,
                }
                for m in route.models
            }
            prior = {
                m: float(predictions[m]["prior"]) for m in route.models if "prior" in predictions[m]
            }
            lead = lead_of(prior, route.lead) if len(prior) == len(route.models) else None
            chosen = rank_models(scored, route.lambda_, route.quality_floor, lead)[0]
            return chosen, scored[chosen]["quality"]
        return route.models[0], None

    def route(self, name: str, row: dict[str, Any]) -> tuple[str, float | None, float | None]:
        """(answering model, cost, predicted quality) for a row on route `name`."""
        config = self.policy.routes[name]
        prompt, completion = row["prompt_tokens"] or 0, row["completion_tokens"] or 0
        extra = row["extra"]
        cache = extra.get("cache")
        if config.cache is not None and isinstance(cache, dict) and cache.get("hit"):
            return str(row["model"] or config.models[0]), 0.0, None  # the same answer, cached
        if isinstance(config, CascadeRoute):
            return self._cascade(config, row)
        if isinstance(config, EadRoute):
            share = float(extra.get("large_token_share") or 0.0)
            small = _price(self.prices, config.small, prompt, completion * (1 - share))
            # Approximation: the large model reads the prompt once for all its spans.
            large = _price(self.prices, config.large, prompt, completion * share) if share else 0.0
            cost = None if small is None or large is None else small + large
            return config.small, cost, None
        if isinstance(config, LearnedRoute):
            chosen, quality = self._learned(config, row)
            return chosen, _price(self.prices, chosen, prompt, completion), quality
        if isinstance(config, CostAwareRoute):
            decision = self._cost_aware[name].route({}, RouteContext(name, 1.0, prompt))
            chosen = decision.models[0]
            return chosen, _price(self.prices, chosen, prompt, completion), None
        chosen = config.models[0]
        return chosen, _price(self.prices, chosen, prompt, completion), None

    def _cascade(self, config: CascadeRoute, row: dict[str, Any]) -> tuple[str, float | None, None]:
        """As many models, cheapest first, as the logged cascade asked; each step priced on
        the logged step's tokens where there is one."""
        extra = row["extra"]
        steps = extra.get("steps") if isinstance(extra.get("steps"), list) else []
        asked = len(steps) or 1 + int(extra.get("escalations") or 0)
        models = config.models[: min(asked, len(config.models))]
        cost = ExactSum()
        for i, model in enumerate(models):
            step = steps[i] if i < len(steps) and isinstance(steps[i], dict) else row
            price = _price(
                self.prices,
                model,
                step.get("prompt_tokens") or 0,
                step.get("completion_tokens") or 0,
            )
            if price is None:
                return models[-1], None, None
            cost.add(price)
        return models[-1], cost.value(), None


def simulate_log(policy: Policy, source: str, rows: Iterable[dict[str, Any]]) -> Simulation:
    router = _LogRouter(policy)
    sim = Simulation(source, "log")
    for row in rows:
        route = row["route"]
        if route and route in policy.routes:
            model, cost, quality = router.route(route, row)
            sim.outcome(route).add(model, cost, quality)
        elif not route and row["model"] in policy.models:
            prompt, completion = row["prompt_tokens"] or 0, row["completion_tokens"] or 0
            cost = _price(router.prices, row["model"], prompt, completion)
            sim.outcome(BY_NAME).add(row["model"], cost)
        else:
            sim.skipped += 1
    if any(isinstance(r, LearnedRoute) for r in policy.routes.values()):
        sim.notes.append(
            "learned routes re-rank each row's logged predictions; rows without them take the "
            "route's first model"
        )
    return sim


def read_log_rows(path: str | Path) -> Iterable[dict[str, Any]]:
    from gateway.report.load import ReportError, iter_batches

    try:
        for batch in iter_batches(path):
            yield from batch
    except ReportError as exc:
        raise SimulationError(str(exc)) from None


def simulate(policy: Policy, source: str, data: str | Path, route: str | None = None) -> Simulation:
    """Replay `data` (routing records JSONL, a request-log SQLite file or a Postgres URL)
    through `policy`."""
    if is_request_log(data):
        return simulate_log(policy, source, read_log_rows(data))
    return simulate_records(policy, source, Path(data), route)


# ---------------------------------------------------------------- output


def _mix_text(outcome: RouteOutcome | None) -> str:
    if outcome is None or not outcome.requests:
        return "-"
    return ", ".join(
        f"{model} {count / outcome.requests:.0%}" for model, count in outcome.mix.most_common()
    )


def _usd(value: float | None) -> str:
    return "-" if value is None else f"${value:,.6f}" if abs(value) < 1 else f"${value:,.2f}"


def _quality(outcome: RouteOutcome | None) -> str:
    if outcome is None or not outcome.quality_n:
        return "-"
    return f"{outcome.quality.value() / outcome.quality_n:.3f}"


def comparison_table(candidate: Simulation, current: Simulation | None) -> Any:
    """A rich table: per route, the candidate's model mix and cost beside the current's."""
    from rich.table import Table

    table = Table(title=f"{candidate.source} vs {current.source if current else '(no current)'}")
    for header in ("route", "requests", "candidate mix", "cost", "current mix", "current cost",
                   "change", "quality (cand / cur)"):  # fmt: skip
        table.add_column(
            header, justify="left" if "mix" in header or header == "route" else "right"
        )
    names = sorted({*candidate.routes, *(current.routes if current else {})})
    for name in names:
        new = candidate.routes.get(name)
        old = current.routes.get(name) if current else None
        new_cost = new.cost.value() if new else None
        old_cost = old.cost.value() if old else None
        change = None if new_cost is None or old_cost is None else new_cost - old_cost
        requests = (new or old).requests if (new or old) else 0
        table.add_row(
            name, f"{requests:,}", _mix_text(new), _usd(new_cost), _mix_text(old), _usd(old_cost),
            _usd(change), f"{_quality(new)} / {_quality(old)}",
        )  # fmt: skip
    table.add_section()
    total_new = candidate.total_cost()
    total_old = current.total_cost() if current else None
    table.add_row(
        "total", "", "", _usd(total_new), "", _usd(total_old),
        _usd(None if total_old is None else total_new - total_old), "", style="bold",
    )  # fmt: skip
    return table
