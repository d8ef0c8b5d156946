"""One request through its phases: admit -> cache -> route -> admit (reserve) -> run ->
respond, with accounting (gateway/accounting/charge.py) writing its row exactly once."""

from __future__ import annotations

import asyncio
import logging

import anyio
from starlette.requests import Request
from starlette.responses import Response

from gateway.accounting.charge import Bill
from gateway.admission.guard import state_unavailable
from gateway.backends.base import Kind
from gateway.dialects import Dialect
from gateway.drain import DRAINED, Drain
from gateway.errors import ApiError
from gateway.pipeline import admit, cache, respond, spans
from gateway.pipeline.context import RequestContext, Services, start
from gateway.pipeline.route import route
from gateway.pipeline.run import run
from gateway.runtime import Runtime
from gateway.state import StateUnavailable

log = logging.getLogger("routegate.pipeline")


async def handle(
    request: Request,
    kind: Kind,
    runtime: Runtime,
    services: Services,
    dialect: Dialect | None = None,
) -> Response:
    """`dialect`: the API the client speaks where it is not OpenAI's (Anthropic Messages,
    OpenAI Responses), translated to a `kind` "chat" request and back."""
    ctx = start(kind, runtime, services, dialect)
    if services.tracing.tracer is not None:
        return await spans.traced(request, ctx, _guarded)
    return await _guarded(request, ctx)


async def _guarded(request: Request, ctx: RequestContext) -> Response:
    """The request, whatever fails inside: an answer in the client's API, and a row."""
    rec = ctx.record
    drain = ctx.services.drain
    try:
        return await _until_cut(request, ctx, drain)
    except _Drained:
        # Still waiting on its upstream at the drain timeout: answered 503, the reservation
        # settled for what is known (a stream is cut in respond.stream instead).
        why = f"503 {DRAINED}: {drain.cut_message()}"
        await ctx.account.finish(Bill(503, rec.model, error=why))
        err = ApiError(
            503,
            "The gateway is shutting down; send the request again",
            code=DRAINED,
            headers={"retry-after": "1"},
        )
        return respond.error(ctx, err, respond.headers(ctx, rec.model, None))
    except asyncio.CancelledError:
        # The last resort: uvicorn cancels what still runs `CUT_SETTLE_S` after the cut (a
        # client disconnect does not cancel a request that is not streaming). The reservation
        # is settled and the row written all the same, then the cancellation goes on.
        why = f"503 {DRAINED}: {drain.cut_message()}" if drain.draining else "cancelled"
        with anyio.CancelScope(shield=True):
            await ctx.account.finish(Bill(503 if drain.draining else 499, rec.model, error=why))
        raise
    except StateUnavailable as exc:
        # Keys, budgets and rate limits cannot be checked: fail closed, and say it is passing.
        log.warning("request %s refused: %s", rec.request_id, exc)
        bill = Bill(503, rec.model, error=f"state store unavailable: {exc}")
        await ctx.account.finish(bill)
        return respond.error(ctx, state_unavailable(exc), respond.headers(ctx, rec.model, None))
    except Exception as exc:
        # A bug must still give the client an OpenAI error and leave a request log row.
        log.exception("request %s failed inside the gateway", rec.request_id)
        spans.internal_error(ctx, exc)
        await ctx.account.finish(Bill(500, rec.model, error=f"internal error: {exc!r}"))
        err = ApiError(500, "Internal error in the gateway", code="internal_error")
        return respond.error(ctx, err, respond.headers(ctx, rec.model, None))


class _Drained(Exception):
    """The drain's cut ended the request before it had its answer."""


async def _until_cut(request: Request, ctx: RequestContext, drain: Drain) -> Response:
    """`_handle`, ended by the drain's cut (gateway/drain.py) wherever it waits then."""
    try:
        async with asyncio.timeout(None) as wait:
            drain.waits.add(wait)  # cut() moves it to now
            try:
                return await _handle(request, ctx)
            finally:
                drain.waits.discard(wait)
    except TimeoutError:
        if wait.expired() and drain.cut_done:
            raise _Drained from None
        raise


async def _handle(request: Request, ctx: RequestContext) -> Response:
    tracing = ctx.services.tracing  # each phase a span when on; nothing when off
    try:
        with tracing.span("routegate.admit"):
            await admit.identify(request, ctx)
        use = await cache.lookup(ctx)
        if use is not None and use.hit is not None:
            return await respond.cached(ctx)
        with tracing.span("routegate.route") as span:
            plan = await route(ctx)
            if span is not None:
                spans.routed(span, ctx, plan)
        with tracing.span("routegate.reserve") as span:
            await admit.reserve(ctx, plan)
            if span is not None:
                spans.reserved(span, ctx, plan)
    except ApiError as err:
        await ctx.account.finish(Bill(err.status, None, error=err.message))
        return respond.error(ctx, err, respond.headers(ctx, None, None))
    return await run(ctx, plan)
