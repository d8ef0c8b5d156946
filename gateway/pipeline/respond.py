"""Respond: the client's answer, error or stream, with the x-routegate-* headers that say
what happened, each after the request is charged (streams: when they end)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import anyio
import orjson
from starlette.responses import Response, StreamingResponse

from cascades.base import CascadeStream, Step
from gateway.accounting.charge import Bill
from gateway.accounting.request_log import CacheOutcome
from gateway.backends.base import CallLimits, UpstreamError, UpstreamStream
from gateway.cache.response_cache import body_from_chunks, chunks_from_body
from gateway.dialects import StreamEncoder
from gateway.dialects.base import H_COST, cost_comment
from gateway.drain import DRAINED, Drain
from gateway.errors import ApiError
from gateway.pipeline.context import RequestContext

H_REQUEST_ID = "x-routegate-request-id"
H_ROUTE = "x-routegate-route"
H_MODEL = "x-routegate-model"
H_FALLBACKS = "x-routegate-fallbacks"
H_MULTIPLIER = "x-routegate-price-multiplier"  # budget pacing's lambda factor, when paced
H_QUALITY = "x-routegate-predicted-quality"  # the router's prediction for the chosen model
H_CACHE = "x-routegate-cache"  # hit | miss, on routes with a response cache
H_STEPS = "x-routegate-cascade-steps"  # models a cascade called, in order, each one paid for
H_EXPLORED = "x-routegate-explored"  # "true": an online layer's exploration chose the model
H_EXPERIMENT = "x-routegate-experiment"  # <experiment>=<arm>, on experiment routes

# A stream's settlement, when it ends: (status, error) -> the cost charged.
Settle = Callable[[int, str | None], Awaitable[float]]


def headers(ctx: RequestContext, model: str | None, cost: float | None) -> dict[str, str]:
    """What happened to the request, for the client: its id, route, model, cost and notes."""
    rec, notes = ctx.record, ctx.notes
    h = {H_REQUEST_ID: rec.request_id, H_ROUTE: rec.route or "", H_MODEL: model or ""}
    if cost is not None:
        h[H_COST] = f"{cost:.10f}"
    if rec.fallbacks:
        h[H_FALLBACKS] = ",".join(rec.fallbacks)
    if notes.price_multiplier is not None:
        h[H_MULTIPLIER] = f"{notes.price_multiplier:.4g}"
    prediction = (notes.predictions or {}).get(model) if model is not None else None
    if prediction is not None:
        h[H_QUALITY] = f"{prediction['quality']:.4f}"
    if notes.cache is not None:
        h[H_CACHE] = "hit" if notes.cache.hit else "miss"
    if notes.steps is not None:
        h[H_STEPS] = ",".join(step.model for step in notes.steps)
    if notes.online is not None and notes.online.get("explored"):
        h[H_EXPLORED] = "true"
    if notes.experiment is not None:
        h[H_EXPERIMENT] = f"{notes.experiment['name']}={notes.experiment['arm']}"
    return h


async def failed(
    ctx: RequestContext,
    err: UpstreamError,
    model: str,
    *,
    steps: list[Step] | None = None,
    fallbacks: list[str] | None = None,
) -> Response:
    """Nothing answered: the client gets the upstream's error; what was spent is still charged."""
    endpoint = ",".join(err.attempts) or None
    bill = Bill(err.status, model, endpoint=endpoint, fallbacks=fallbacks, error=err.logged)
    bill.steps = steps
    await ctx.account.finish(bill)
    api = ApiError(err.status, err.message, code=err.code, param=err.param)
    h = headers(ctx, model, ctx.record.cost_usd)
    if err.retry_after_s is not None:
        h["retry-after"] = str(max(1, math.ceil(err.retry_after_s)))
    return error(ctx, api, h)


def error(ctx: RequestContext, err: ApiError, h: Mapping[str, str]) -> Response:
    """The error in the shape of the API the client called."""
    if ctx.dialect is not None:
        return ctx.dialect.error(err, h)
    return err.response(h)


class _OpenAIStream:
    """OpenAI's server-sent events: each chunk as it is, the usage chunk only when asked."""

    __slots__ = ("_wants_usage",)

    def __init__(self, body: dict[str, Any]) -> None:
        self._wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))

    def chunk(self, chunk: dict[str, Any]) -> bytes:
        if not chunk.get("choices") and chunk.get("usage") and not self._wants_usage:
            return b""  # the client did not ask for the usage chunk
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    def error(self, err: ApiError) -> bytes:
        return b"data: " + err.body() + b"\n\n"

    def end(self, cost: float) -> bytes:
        # Streams cannot carry the final cost in a header: it comes as an SSE comment, which
        # OpenAI clients ignore, and in the request log.
        return cost_comment(cost) + b"data: [DONE]\n\n"


def _encoder(ctx: RequestContext) -> StreamEncoder:
    if ctx.dialect is not None:
        return ctx.dialect.encoder(ctx.body, ctx.record.request_id)
    return _OpenAIStream(ctx.body)


async def answered(ctx: RequestContext, body: dict[str, Any], bill: Bill) -> Response:
    """A whole answer (status 200 from `bill`), charged, then stored in the route's cache."""
    cost = await ctx.account.finish(bill)
    assert bill.model is not None  # an answer has a model
    if ctx.cache is not None:
        await ctx.cache.store(body, bill.model, cost)
    if ctx.dialect is not None:
        body = ctx.dialect.answer(body, ctx.body, ctx.record.request_id)
    return Response(
        orjson.dumps(body),
        media_type="application/json",
        headers=headers(ctx, bill.model, cost),
    )


async def cached(ctx: RequestContext) -> Response:
    """A hit costs nothing and calls no model; the log row says what it saved."""
    assert ctx.cache is not None and ctx.cache.hit is not None  # only called on a hit
    hit, rec = ctx.cache.hit, ctx.record
    ctx.notes.cache = CacheOutcome(hit=True, saved_usd=hit.cost_usd, cached_at=hit.created_at)
    await ctx.account.finish(Bill(status=200, model=hit.model, endpoint="cache"))
    h = headers(ctx, hit.model, 0.0)
    if not rec.stream:
        body = hit.body
        if ctx.dialect is not None:
            body = ctx.dialect.answer(body, ctx.body, rec.request_id)
        return Response(orjson.dumps(body), media_type="application/json", headers=h)
    encoder = _encoder(ctx)
    chunks = chunks_from_body(ctx.kind, hit.body)

    async def events() -> AsyncIterator[bytes]:
        for chunk in chunks:
            if data := encoder.chunk(chunk):
                yield data
        yield encoder.end(0.0)

    return StreamingResponse(events(), media_type="text/event-stream", headers=_sse(h))


def _sse(h: dict[str, str]) -> dict[str, str]:
    h["cache-control"] = "no-cache"
    h["x-accel-buffering"] = "no"
    return h


async def _within(
    chunks: AsyncIterator[dict[str, Any]], limits: CallLimits, opened: float, drain: Drain
) -> AsyncIterator[dict[str, Any]]:
    """The stream's chunks, cut (UpstreamError 504) past its deadline, `stream_timeout_s` after
    the first upstream call, or after a gap of `stream_idle_timeout_s` between two chunks; cut
    (503 drained) when a shutting-down gateway's drain timeout is over."""
    total = limits.stream_timeout_s or limits.timeout_s
    deadline = opened + total
    idle = limits.stream_idle_timeout_s
    waits = drain.waits
    while True:
        if drain.cut_done:
            raise UpstreamError(503, drain.cut_message(), DRAINED, retryable=False)
        left = deadline - time.monotonic()
        by_deadline = idle is None or left <= idle
        try:
            async with asyncio.timeout(max(left, 0.0) if by_deadline else idle) as wait:
                waits.add(wait)  # drain.cut() moves it to now
                try:
                    chunk = await anext(chunks)
                finally:
                    waits.discard(wait)
        except StopAsyncIteration:
            return
        except TimeoutError:
            if drain.cut_done:
                raise UpstreamError(503, drain.cut_message(), DRAINED, retryable=False) from None
            why = (
                f"the stream ran past its deadline of {total:g} s (stream_timeout_s)"
                if by_deadline
                else f"no chunk came for {idle:g} s (stream_idle_timeout_s)"
            )
            raise UpstreamError(504, f"stream cut: {why}", "upstream_timeout") from None
        yield chunk


def stream(
    ctx: RequestContext,
    upstream: UpstreamStream | CascadeStream,
    model: str,
    settle: Settle,
    limits: CallLimits,
    opened: float,
) -> StreamingResponse:
    """The upstream's chunks as server-sent events; `settle` charges the request when the
    stream ends, however it ends (`opened`: time.monotonic() at the first upstream call)."""
    rec, kind = ctx.record, ctx.kind
    rec.ttft_ms = (time.perf_counter() - ctx.t0) * 1000
    encoder = _encoder(ctx)
    cache = ctx.cache
    kept: list[dict[str, Any]] | None = [] if cache is not None else None

    async def events() -> AsyncIterator[bytes]:
        status, why = 499, "client disconnected"  # unless the stream runs to its end
        drain = ctx.services.drain
        try:
            async for chunk in _within(aiter(upstream), limits, opened, drain):
                if kept is not None:
                    kept.append(chunk)
                if data := encoder.chunk(chunk):
                    yield data
            status, why = 200, None
        except Exception as exc:  # the upstream broke or was cut: tell the client in-band
            status, why = 502, str(exc)
            api = ApiError(502, f"upstream stream failed: {exc}", code="upstream_error")
            if isinstance(exc, UpstreamError):
                status = exc.status
                api = ApiError(exc.status, exc.message, code=exc.code, param=exc.param)
            yield encoder.error(api)
        finally:
            # Shielded: on a client disconnect this task is being cancelled, and closing the
            # upstream (which aborts generation there), settling the budget and the request
            # log row must still happen.
            with anyio.CancelScope(shield=True):
                if status == 499 and drain.cut_done:  # cancelled by the server's shutdown
                    status, why = 503, f"503 {DRAINED}: {drain.cut_message()}"
                await upstream.aclose()
                cost = await settle(status, why)
                if cache is not None and kept is not None and status == 200:
                    await cache.store(body_from_chunks(kind, kept), model, cost)
        yield encoder.end(cost)

    h = headers(ctx, model, None)
    return StreamingResponse(events(), media_type="text/event-stream", headers=_sse(h))
