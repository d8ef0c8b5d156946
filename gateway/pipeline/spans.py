"""A request's spans, when tracing is on (gateway/tracing.py): what each one says.

The tree of one request:

- `POST /v1/...` (SERVER): from arrival to the request log row (a stream: to its end), the
  caller's trace continued from its `traceparent`;
  - `routegate.admit`: the key, the body, the route and the key's permission;
  - `routegate.cache`: the route's response cache lookup (routes with a cache);
  - `routegate.route`: the router's chain, its predictions and its choice;
  - `routegate.reserve`: rate limits and budget reservations;
  - `routegate.cascade` (cascade routes): every model call below it is one numbered step;
  - `{operation} {model}` (CLIENT, gateway/backends/traced.py): each backend call.

Off, none of this runs: the handler takes its untraced path.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from opentelemetry.trace import Span, SpanKind, set_span_in_context, use_span
from starlette.requests import Request
from starlette.responses import Response

from cascades.base import Cascade, Step
from gateway.backends.base import Backend, UpstreamError
from gateway.backends.traced import TracedBackends
from gateway.pipeline.context import RequestContext
from gateway.pipeline.route import Plan
from gateway.tracing import OPERATION, RequestSpan, extract, fail, request_attributes

log = logging.getLogger("routegate.pipeline")

Handle = Callable[[Request, RequestContext], Awaitable[Response]]


async def traced(request: Request, ctx: RequestContext, handle: Handle) -> Response:
    """`handle` under the request's SERVER span, which ends when the request is accounted
    for (Accounting.finish: at the stream's end for a stream)."""
    tracer = ctx.services.tracing.tracer
    assert tracer is not None  # only called when tracing is on
    path = request.scope["path"]
    rec = ctx.record
    span = tracer.start_span(
        f"POST {path}",
        context=extract(request.headers),
        kind=SpanKind.SERVER,
        attributes={
            "http.request.method": "POST",
            "http.route": path,
            "url.path": path,
            "gen_ai.operation.name": OPERATION[ctx.kind],
            "routegate.request_id": rec.request_id,
            "routegate.api": rec.api or ctx.kind,
        },
    )
    ctx.trace = trace = RequestSpan(span)
    ctx.account.on_finish = lambda: _finish(ctx, trace)
    with use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
        try:
            return await handle(request, ctx)
        except BaseException as exc:  # cancelled (the client went away): no row, no finish
            if not trace.ended:
                fail(span, type(exc).__qualname__)
                trace.end()
            raise


def internal_error(ctx: RequestContext, exc: Exception) -> None:
    """A bug inside the gateway: the exception, on the request's span."""
    if ctx.trace is not None:
        ctx.trace.span.record_exception(exc)
        ctx.trace.error_type = type(exc).__qualname__


def _finish(ctx: RequestContext, trace: RequestSpan) -> None:
    """How the request ended, on its span, which ends here."""
    rec, notes, span = ctx.record, ctx.notes, trace.span
    if trace.ended:
        return
    attributes: dict[str, Any] = {
        "http.response.status_code": rec.status,
        "routegate.stream": rec.stream,
        "gen_ai.usage.input_tokens": rec.prompt_tokens,
        "gen_ai.usage.output_tokens": rec.completion_tokens,
        "routegate.cost_usd": rec.cost_usd,
        "routegate.usage_exact": rec.usage_exact,
    }
    asked = ctx.body.get("model")
    if isinstance(asked, str):
        attributes["gen_ai.request.model"] = asked
        attributes.update(request_attributes(ctx.body))
    optional = {
        "gen_ai.response.model": rec.model,
        "routegate.route": rec.route,
        "routegate.endpoint": rec.endpoint,
        "routegate.key_id": rec.api_key_id,
        "routegate.team": rec.team,
        "routegate.ttft_ms": rec.ttft_ms,
    }
    attributes.update({k: v for k, v in optional.items() if v is not None})
    if rec.fallbacks:
        attributes["routegate.fallbacks"] = rec.fallbacks
    if notes.cache is not None:
        attributes["routegate.cache.hit"] = notes.cache.hit
    if notes.experiment is not None:
        attributes["routegate.experiment"] = notes.experiment["name"]
        attributes["routegate.experiment.arm"] = notes.experiment["arm"]
    span.set_attributes(attributes)
    # As the HTTP conventions say for a server: 5xx is the server's failure, a 4xx the
    # client's (error.type says which, the status stays unset).
    if rec.status >= 500:
        fail(span, trace.error_type or str(rec.status), rec.error)
    elif rec.status >= 400:
        span.set_attribute("error.type", str(rec.status))
    trace.end()


def routed(span: Span, ctx: RequestContext, plan: Plan) -> None:
    """The router's name, chain, per-model predictions and choice, on the route span."""
    config, notes = ctx.config, ctx.notes
    route = ctx.record.route
    attributes: dict[str, Any] = {
        "routegate.router": config.kind if config is not None else "model",
        "routegate.router.chain": plan.models,
    }
    if route is not None:
        attributes["routegate.route"] = route
        router = ctx.runtime.routers.get(route)
        if router is not None:
            attributes["routegate.router.class"] = type(router).__name__
    if plan.models:
        attributes["routegate.router.chosen_model"] = plan.models[0]
    if notes.price_multiplier is not None:
        attributes["routegate.price_multiplier"] = notes.price_multiplier
    if notes.predictions:
        models = list(notes.predictions)
        attributes["routegate.router.predictions.models"] = models
        for key in sorted({k for p in notes.predictions.values() for k in p}):
            values = [notes.predictions[m].get(key) for m in models]
            if all(isinstance(v, int | float) for v in values):
                attributes[f"routegate.router.predictions.{key}"] = [float(v) for v in values]
    if notes.online is not None and "explored" in notes.online:
        attributes["routegate.router.explored"] = bool(notes.online["explored"])
    if plan.cascade is not None:
        attributes["routegate.cascade.models"] = plan.cascade.models()
    span.set_attributes(attributes)


def reserved(span: Span, ctx: RequestContext, plan: Plan) -> None:
    """What the budgets left of the chain, on the reserve span."""
    span.set_attribute("routegate.models_admitted", [a.model for a in plan.attempts])
    if ctx.notes.skipped_for_budget:
        span.set_attribute("routegate.skipped_for_budget", ctx.notes.skipped_for_budget)


def backends(ctx: RequestContext) -> Mapping[str, Backend]:
    """The backends the chain calls: each call a span under the request's, when tracing."""
    tracer, trace = ctx.services.tracing.tracer, ctx.trace
    if tracer is None or trace is None:
        return ctx.runtime.backends
    parent = set_span_in_context(trace.span)
    return TracedBackends(ctx.runtime.backends, tracer, parent, ctx.runtime.prices)


class CascadeSpan:
    """A cascade route's span: its calls are numbered steps under it; it ends with the
    cascade (a stream: when it ends), with every step's model, usage and decision."""

    __slots__ = ("_ended", "backends", "span")

    def __init__(self, ctx: RequestContext, cascade: Cascade, span: Span):
        self.span = span
        tracer = ctx.services.tracing.tracer
        assert tracer is not None and ctx.record.route is not None  # a traced cascade route
        self.backends = TracedBackends(
            ctx.runtime.backends,
            tracer,
            set_span_in_context(span),
            ctx.runtime.prices,
            cascade=ctx.record.route,
        )
        self._ended = False

    def end(
        self,
        steps: list[Step],
        detail: Mapping[str, Any] | None = None,
        error: BaseException | str | None = None,
    ) -> None:
        if self._ended:
            return
        self._ended = True
        span = self.span
        span.set_attribute("routegate.cascade.steps", [s.model for s in steps])
        for key in ("escalations", "switches"):
            value = (detail or {}).get(key)
            if isinstance(value, int):
                span.set_attribute(f"routegate.cascade.{key}", value)
        for i, step in enumerate(steps):
            span.add_event("routegate.cascade.step", _step_attributes(i, step))
        if isinstance(error, UpstreamError):
            fail(span, error.code, error.message)
        elif isinstance(error, BaseException):
            fail(span, type(error).__qualname__, str(error) or None)
        elif error is not None:
            fail(span, "stream_error", error)
        span.end()


def cascade_span(ctx: RequestContext, cascade: Cascade) -> CascadeSpan | None:
    """The cascade's span under the request's, or None when tracing is off."""
    tracer, trace = ctx.services.tracing.tracer, ctx.trace
    if tracer is None or trace is None:
        return None
    span = tracer.start_span(
        "routegate.cascade",
        context=set_span_in_context(trace.span),
        attributes={
            "routegate.route": ctx.record.route or "",
            "routegate.cascade.models": cascade.models(),
        },
    )
    return CascadeSpan(ctx, cascade, span)


def _step_attributes(i: int, step: Step) -> dict[str, Any]:
    out: dict[str, Any] = {
        "routegate.cascade.step": i,
        "gen_ai.request.model": step.model,
        "gen_ai.usage.input_tokens": step.usage.prompt_tokens,
        "gen_ai.usage.output_tokens": step.usage.completion_tokens,
    }
    for key, value in step.detail.items():
        # Attribute values are str, bool, int, float: confidence, escalate, role, error...
        if isinstance(value, str | bool | int | float):
            out[f"routegate.cascade.{key}"] = value
    return out
