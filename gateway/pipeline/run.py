"""Run: call the planned models, through the fallback chain or the route's cascade, and hand
the answer or the stream to `respond` with what it cost."""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import Any

from starlette.responses import Response, StreamingResponse

from cascades.base import Cascade, CascadeFailed, CascadeStream, Step
from cascades.fallback import ChainFailed, Outcome, first_success
from gateway.accounting.charge import Bill
from gateway.backends.base import CallLimits, UpstreamCall, UpstreamStream
from gateway.pipeline import respond, spans
from gateway.pipeline.context import RequestContext
from gateway.pipeline.route import Plan


async def run(ctx: RequestContext, plan: Plan) -> Response:
    """The planned chain, first success wins; a cascade route runs its cascade instead."""
    if plan.cascade is not None:
        return await _run_cascade(ctx, plan.cascade)
    runtime = ctx.runtime
    backends = spans.backends(ctx)  # the runtime's, each call a span when tracing
    try:
        if ctx.record.stream:
            opened = time.monotonic()
            stream = await first_success(plan.attempts, backends, _open_stream)
            return _chain_stream(ctx, stream, runtime.limits[stream.model], opened)
        done = await first_success(plan.attempts, backends, _complete)
    except ChainFailed as failed:
        return await respond.failed(
            ctx,
            failed.error,
            failed.model,
            steps=failed.charged or None,
            fallbacks=failed.fallbacks,
        )
    result = done.result
    answer = Step(done.model, result.usage, result.endpoint, result.provider_cost_usd)
    bill = Bill(
        200,
        done.model,
        usage=result.usage,
        provider_cost=result.provider_cost_usd,
        endpoint=result.endpoint,
        fallbacks=done.fallbacks,
        # Models that answered 200 with no usable answer before this one are paid for too.
        steps=[*done.charged, answer] if done.charged else None,
        detail={"failed_endpoints": result.failed} if result.failed else None,
    )
    return await respond.answered(ctx, result.body, bill)


async def _run_cascade(ctx: RequestContext, cascade: Cascade) -> Response:
    """A route whose answer may take several models: every step is charged, even on failure."""
    runtime = ctx.runtime
    trace = spans.cascade_span(ctx, cascade)  # None unless tracing
    backends = runtime.backends if trace is None else trace.backends
    try:
        if ctx.record.stream:
            opened = time.monotonic()
            stream = await cascade.open_stream(ctx.kind, ctx.body, backends)
            # The streaming model's limits; EAD's combined name has none: its small model's.
            limits = runtime.limits.get(stream.model) or runtime.limits[cascade.models()[0]]
            return _cascade_stream(ctx, stream, limits, opened, trace)
        result = await cascade.complete(ctx.kind, ctx.body, backends)
    except CascadeFailed as failed:
        if trace is not None:
            trace.end(failed.steps, None, failed.error)
        return await respond.failed(ctx, failed.error, failed.model, steps=failed.steps)
    except BaseException as exc:
        if trace is not None:
            trace.end([], None, exc)
        raise
    if trace is not None:
        trace.end(result.steps, result.detail)
    bill = Bill(
        200,
        result.model,
        steps=result.steps,
        detail=result.detail,
        endpoint=result.steps[-1].endpoint if result.steps else None,
    )
    return await respond.answered(ctx, result.body, bill)


def _complete(backend: Any, call: UpstreamCall) -> Any:
    return backend.complete(call)


def _open_stream(backend: Any, call: UpstreamCall) -> Any:
    return backend.open_stream(call)


def _chain_stream(
    ctx: RequestContext, outcome: Outcome[UpstreamStream], limits: CallLimits, opened: float
) -> StreamingResponse:
    stream = outcome.result
    ctx.record.fallbacks = outcome.fallbacks
    failed = list(getattr(stream, "attempts", [])[:-1])  # endpoints that failed before it

    def settle(status: int, error: str | None) -> Awaitable[float]:
        answer = Step(outcome.model, stream.usage, stream.endpoint, stream.provider_cost_usd)
        bill = Bill(
            status,
            outcome.model,
            usage=stream.usage,
            provider_cost=stream.provider_cost_usd,
            endpoint=stream.endpoint,
            fallbacks=outcome.fallbacks,
            error=error,
            steps=[*outcome.charged, answer] if outcome.charged else None,
            detail={"failed_endpoints": failed} if failed else None,
        )
        return ctx.account.finish(bill)

    return respond.stream(ctx, stream, outcome.model, settle, limits, opened)


def _cascade_stream(
    ctx: RequestContext,
    stream: CascadeStream,
    limits: CallLimits,
    opened: float,
    trace: spans.CascadeSpan | None,
) -> StreamingResponse:
    def settle(status: int, error: str | None) -> Awaitable[float]:
        if trace is not None:
            trace.end(stream.steps, stream.detail, error if status != 200 else None)
        last = stream.steps[-1].endpoint if stream.steps else None
        bill = Bill(
            status,
            stream.model,
            steps=stream.steps,
            detail=stream.detail,
            endpoint=last,
            error=error,
        )
        return ctx.account.finish(bill)

    return respond.stream(ctx, stream, stream.model, settle, limits, opened)
