"""The last step of a request: its cost, the budget settlement, its request log row and its
metrics, exactly once, whatever happened before."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cascades.base import Step
from gateway.accounting.feedback_signals import implicit_feedback
from gateway.accounting.request_log import (
    ChargedStep,
    FeedbackRecord,
    RequestLog,
    RequestNotes,
    RequestRecord,
)
from gateway.backends.base import Usage
from gateway.metrics import Metrics
from policies.pricing import CostFn
from policies.schema import RouteConfig

log = logging.getLogger("routegate.pipeline")


class Settlement(Protocol):
    """What admission reserved for a request, to settle when it ends (an `Admission`)."""

    @property
    def budgets(self) -> Sequence[object]: ...  # the budgets reserved on; empty: none

    @property
    def reserved_usd(self) -> float: ...

    async def settle(self, cost_usd: float, tokens: int) -> None: ...


@dataclass(slots=True)
class Bill:
    """How one request ended, as the pipeline tells it to `Accounting.finish`."""

    status: int
    model: str | None
    usage: Usage | None = None
    provider_cost: float | None = None
    endpoint: str | None = None
    fallbacks: list[str] | None = None
    error: str | None = None
    steps: list[Step] | None = None  # a cascade's calls, each paid for; then `usage` is not used
    detail: dict[str, Any] | None = None


class Accounting:
    """Cost, budget settlement, request log row and metrics for one request: exactly once."""

    def __init__(
        self,
        request_log: RequestLog,
        metrics: Metrics,
        prices: Mapping[str, CostFn],
        record: RequestRecord,
        notes: RequestNotes,
        t0: float,
    ):
        self._request_log = request_log
        self._metrics = metrics
        self._prices = prices
        self.record = record
        self.notes = notes
        self._t0 = t0
        self._done = False
        self.admission: Settlement | None = None
        # Set once the route is known: its policy (for implicit feedback) and, on a route
        # that learns, what hands that feedback to its online layer (off the request path).
        self.route_config: RouteConfig | None = None
        self.learn: Callable[[FeedbackRecord], None] | None = None
        # Told once the row is written: the request's trace span ends (pipeline/spans.py).
        self.on_finish: Callable[[], None] | None = None

    def cost(self, model: str, usage: Usage, provider_cost: float | None) -> float:
        """The call's cost: its cached prompt tokens at the cached price, the rest at the
        input price (a provider's own price already counts its cache reads)."""
        price = self._prices.get(model)
        if price is not None:
            return price(
                usage.prompt_tokens, usage.completion_tokens, provider_cost, usage.cached_tokens
            )
        return provider_cost or 0.0

    def cache_saved(self, model: str, usage: Usage) -> float:
        """What prompt caching saved on a call: its cost at the full input price, less the
        cost with its cached tokens priced as cached (list prices both, never the provider's
        own figure, so the two sides are priced alike)."""
        price = self._prices.get(model)
        if price is None or not usage.cached_tokens:
            return 0.0
        p, c = usage.prompt_tokens, usage.completion_tokens
        return max(0.0, price(p, c, None) - price(p, c, None, usage.cached_tokens))

    async def finish(self, bill: Bill) -> float:
        """Write down how the request ended; the cost charged. Later calls change nothing."""
        if self._done:
            return self.record.cost_usd
        self._done = True
        rec = self.record
        rec.status, rec.model = bill.status, bill.model
        rec.endpoint, rec.error = bill.endpoint, bill.error
        rec.fallbacks = bill.fallbacks or []
        rec.latency_ms = (time.perf_counter() - self._t0) * 1000
        calls = bill.steps or []
        if not bill.steps and bill.usage is not None and bill.model is not None:
            calls = [Step(bill.model, bill.usage, bill.endpoint or "", bill.provider_cost)]
        step_costs = [(s, self.cost(s.model, s.usage, s.provider_cost_usd)) for s in calls]
        anomalies = _anomalies(step_costs)
        step_costs = self._within_reservation(step_costs, anomalies)
        if calls:
            rec.prompt_tokens = sum(s.usage.prompt_tokens for s in calls)
            rec.completion_tokens = sum(s.usage.completion_tokens for s in calls)
            rec.cached_tokens = sum(s.usage.cached_tokens for s in calls)
            saved = math.fsum(self.cache_saved(s.model, s.usage) for s in calls)
            if saved > 0:
                self.notes.prompt_cache_saved_usd = saved
            rec.usage_exact = all(s.usage.exact for s in calls) and not anomalies
            rec.cost_usd = math.fsum(c for _, c in step_costs)
        if bill.steps:
            self.notes.steps = [_charged(s, c) for s, c in step_costs]
        if bill.detail:
            _note_detail(rec, self.notes, bill.detail)
        if anomalies:
            rec.extra["usage_anomaly"] = {
                "kinds": sorted({k for a in anomalies for k in a["kinds"]}),
                "calls": anomalies,
                "charged_usd": rec.cost_usd,
            }
            log.warning(
                "request %s: upstream anomaly on route %r: %s; charged $%.6f",
                rec.request_id,
                rec.route,
                anomalies,
                rec.cost_usd,
            )
        if self.admission is not None:
            try:
                await self.admission.settle(rec.cost_usd, rec.prompt_tokens + rec.completion_tokens)
            except Exception as exc:  # the state store failed: the row must still be written
                log.exception("settling %s failed", rec.request_id)
                rec.error = f"{rec.error or ''}; budget settlement failed: {exc!r}".lstrip("; ")
        self._request_log.write(rec, self.notes)
        for feedback in implicit_feedback(rec, self.notes, self.route_config, time.time()):
            self._request_log.write_feedback(feedback)
            if self.learn is not None:
                self.learn(feedback)
        if self._request_log.durable:  # the answer waits for its row (serve --log-durable)
            await self._request_log.stored()
        self._count(step_costs, anomalies)
        if self.on_finish is not None:
            try:
                self.on_finish()
            except Exception:  # tracing must never cost a request its answer
                log.exception("ending the trace span of %s failed", rec.request_id)
        return rec.cost_usd

    def _count(self, step_costs: list[tuple[Step, float]], anomalies: list[dict[str, Any]]) -> None:
        rec, notes, m = self.record, self.notes, self._metrics
        route, model_label, status = rec.route or "", rec.model or "", str(rec.status)
        m.requests_of(route, model_label, status).inc()
        m.worker_requests.inc()
        api = rec.api or rec.endpoint_kind
        m.api_requests_of(api, status).inc()
        if rec.cost_usd:
            m.api_cost_of(api).inc(rec.cost_usd)
        if rec.status >= 400:
            m.errors_of(route, model_label, status).inc()
        assert rec.latency_ms is not None  # set by finish
        m.latency_of(route, model_label).observe(rec.latency_ms / 1000)
        if rec.ttft_ms is not None:
            m.ttft_of(route, model_label).observe(rec.ttft_ms / 1000)
        for fallen in rec.fallbacks:
            m.fallbacks_of(route, fallen).inc()
        if notes.cache is not None:
            m.cache_of(route, "hit" if notes.cache.hit else "miss").inc()
            if notes.cache.hit:
                m.cache_saved.labels(route).inc(notes.cache.saved_usd)
        if notes.escalations:
            m.escalations.labels(route).inc(notes.escalations)
        if notes.switches:
            m.switches.labels(route).inc(notes.switches)
        for anomaly in anomalies:
            for kind in anomaly["kinds"]:
                m.anomalies.labels(route, anomaly["model"], kind).inc()
        for step, cost in step_costs:
            m.tokens_of(route, step.model, "prompt").inc(step.usage.prompt_tokens)
            m.tokens_of(route, step.model, "completion").inc(step.usage.completion_tokens)
            m.cost_of(route, step.model).inc(cost)

    def _within_reservation(
        self, step_costs: list[tuple[Step, float]], anomalies: list[dict[str, Any]]
    ) -> list[tuple[Step, float]]:
        """Never charge more than a budget reserved: the reservation was the worst case the
        request can truthfully cost, so anything above it is an upstream's report not to pay."""
        admission = self.admission
        total = math.fsum(c for _, c in step_costs)
        if admission is None or not admission.budgets or total <= admission.reserved_usd:
            return step_costs
        cap = admission.reserved_usd
        anomalies.append(
            {
                "model": step_costs[-1][0].model,
                "kinds": ["over_reservation"],
                "cost_usd": total,
                "reserved_usd": cap,
            }
        )
        return [(s, c * cap / total) for s, c in step_costs]


def _note_detail(rec: RequestRecord, notes: RequestNotes, detail: dict[str, Any]) -> None:
    """A cascade's counters become typed notes; the rest goes to the record's `extra` as is
    (each cascade puts its counter first, where the notes are written: the column is as it
    was)."""
    rest = dict(detail)
    if "escalations" in rest:
        notes.escalations = rest.pop("escalations")
    if "switches" in rest:
        notes.switches = rest.pop("switches")
    rec.extra.update(rest)


def _anomalies(step_costs: list[tuple[Step, float]]) -> list[dict[str, Any]]:
    """The calls whose upstream reported what no call can produce; a cost that is no
    non-negative number (a provider's own price) is one too, and charged as nothing."""
    found: list[dict[str, Any]] = []
    for i, (step, cost) in enumerate(step_costs):
        kinds = list((step.usage.anomaly or {}).get("kinds", []))
        if not (math.isfinite(cost) and cost >= 0):
            kinds.append("invalid_cost")
            step_costs[i] = (step, 0.0)
        if kinds:
            charged = {
                "prompt_tokens": step.usage.prompt_tokens,
                "completion_tokens": step.usage.completion_tokens,
            }
            found.append(
                {**(step.usage.anomaly or {}), "model": step.model, "kinds": kinds,
                 "charged": charged}
            )  # fmt: skip
    return found


def _charged(step: Step, cost: float) -> ChargedStep:
    return ChargedStep(
        step.model,
        step.usage.prompt_tokens,
        step.usage.completion_tokens,
        cost,
        step.endpoint,
        dict(step.detail),  # as it is now: the row is written later, in another thread
        step.usage.cached_tokens,
    )
