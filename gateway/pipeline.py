"""One request through the gateway: request -> policy -> router -> cascade -> backend -> accounting.

Each step is a call into its own module; this file only wires them and says what happened in
headers, the request log and metrics.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from cascades.base import Cascade, CascadeFailed, CascadeStream, Step
from cascades.fallback import Attempt, ChainFailed, Outcome, first_success
from gateway.accounting.request_log import RequestLog, RequestRecord
from gateway.admission.access import Access, Admission, typical_from_upper
from gateway.admission.guard import client_address, state_unavailable
from gateway.admission.price_multiplier import Pacers
from gateway.backends.base import (
    CallLimits,
    Kind,
    UpstreamCall,
    UpstreamError,
    UpstreamStream,
    Usage,
)
from gateway.cache.response_cache import (
    CachedAnswer,
    ResponseCache,
    body_from_chunks,
    chunks_from_body,
    scope_id,
)
from gateway.errors import ApiError
from gateway.metrics import Metrics
from gateway.request_schema import parse_request
from gateway.runtime import Runtime
from gateway.state import StateUnavailable
from gateway.tokens import prompt_tokens_upper
from policies.schema import RouteConfig
from routers.serving.base import RouteContext, RoutingDecision

log = logging.getLogger("routegate.pipeline")

H_REQUEST_ID = "x-routegate-request-id"
H_ROUTE = "x-routegate-route"
H_MODEL = "x-routegate-model"
H_COST = "x-routegate-cost-usd"
H_FALLBACKS = "x-routegate-fallbacks"
H_MULTIPLIER = "x-routegate-price-multiplier"  # budget pacing's lambda factor, when paced
H_QUALITY = "x-routegate-predicted-quality"  # the router's prediction for the chosen model
H_CACHE = "x-routegate-cache"  # hit | miss, on routes with a response cache
H_STEPS = "x-routegate-cascade-steps"  # models a cascade called, in order, each one paid for


@dataclass(slots=True)
class Services:
    """What the pipeline needs besides the policy: access checks, records and metrics."""

    request_log: RequestLog
    metrics: Metrics
    access: Access
    pacers: Pacers


def new_request_id() -> str:
    return "rg-" + secrets.token_hex(12)


def resolve(runtime: Runtime, name: str) -> tuple[str | None, RouteConfig | None]:
    """Policy: the route asked for (None, None for a model asked by name), or 404."""
    if name in runtime.policy.models:
        return None, None
    config = runtime.policy.routes.get(name)
    if config is None:
        raise ApiError(
            404,
            f"The model '{name}' does not exist: it is neither a model nor a route of this "
            "gateway (see GET /v1/models)",
            code="model_not_found",
            param="model",
        )
    return name, config


async def plan(
    runtime: Runtime, body: dict[str, Any], kind: Kind, route: str | None, ctx: RouteContext
) -> tuple[RoutingDecision, list[Attempt]]:
    """Router: the models to try, in order, each with its upstream call."""
    if route is None:
        decision = RoutingDecision(runtime.chain_for_model(body["model"]))
    else:
        routed = runtime.routers[route].route(body, ctx)
        # Learned routers score off the event loop and are awaited; the rest answer at once.
        decision = await routed if inspect.isawaitable(routed) else routed
    attempts = [Attempt(model, runtime.limits[model].call(kind, body)) for model in decision.models]
    return decision, attempts


class Accounting:
    """Cost, budget settlement, request log row and metrics for one request: exactly once."""

    def __init__(self, services: Services, runtime: Runtime, record: RequestRecord, t0: float):
        self._services = services
        self._runtime = runtime
        self.record = record
        self._t0 = t0
        self._done = False
        self.admission: Admission | None = None

    def cost(self, model: str, usage: Usage, provider_cost: float | None) -> float:
        price = self._runtime.prices.get(model)
        if price is not None:
            return price(usage.prompt_tokens, usage.completion_tokens, provider_cost)
        return provider_cost or 0.0

    async def finish(
        self,
        *,
        status: int,
        model: str | None,
        usage: Usage | None = None,
        provider_cost: float | None = None,
        endpoint: str | None = None,
        fallbacks: list[str] | None = None,
        error: str | None = None,
        steps: list[Step] | None = None,
        detail: dict[str, Any] | None = None,
    ) -> float:
        """`steps`: a cascade's calls, each paid for; then `usage` is not used."""
        if self._done:
            return self.record.cost_usd
        self._done = True
        rec = self.record
        rec.status, rec.model, rec.endpoint, rec.error = status, model, endpoint, error
        rec.fallbacks = fallbacks or []
        rec.latency_ms = (time.perf_counter() - self._t0) * 1000
        calls = steps or []
        if not steps and usage is not None and model is not None:
            calls = [Step(model, usage, endpoint or "", provider_cost)]
        step_costs = [(s, self.cost(s.model, s.usage, s.provider_cost_usd)) for s in calls]
        anomalies = _anomalies(step_costs)
        step_costs = self._within_reservation(step_costs, anomalies)
        if calls:
            rec.prompt_tokens = sum(s.usage.prompt_tokens for s in calls)
            rec.completion_tokens = sum(s.usage.completion_tokens for s in calls)
            rec.usage_exact = all(s.usage.exact for s in calls) and not anomalies
            rec.cost_usd = math.fsum(c for _, c in step_costs)
        if steps:
            rec.extra["steps"] = [_step_row(s, c) for s, c in step_costs]
        if detail:
            rec.extra.update(detail)
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
        self._services.request_log.write(rec)

        m = self._services.metrics
        route, model_label = rec.route or "", model or ""
        m.requests.labels(route, model_label, str(status)).inc()
        if status >= 400:
            m.errors.labels(route, model_label, str(status)).inc()
        m.latency.labels(route, model_label).observe(rec.latency_ms / 1000)
        if rec.ttft_ms is not None:
            m.ttft.labels(route, model_label).observe(rec.ttft_ms / 1000)
        for fallen in rec.fallbacks:
            m.fallbacks.labels(route, fallen).inc()
        cache = rec.extra.get("cache")
        if cache is not None:
            m.cache.labels(route, "hit" if cache["hit"] else "miss").inc()
            if cache["hit"]:
                m.cache_saved.labels(route).inc(cache["saved_usd"])
        if rec.extra.get("escalations"):
            m.escalations.labels(route).inc(rec.extra["escalations"])
        if rec.extra.get("switches"):
            m.switches.labels(route).inc(rec.extra["switches"])
        for anomaly in anomalies:
            for kind in anomaly["kinds"]:
                m.anomalies.labels(route, anomaly["model"], kind).inc()
        for step, cost in step_costs:
            m.tokens.labels(route, step.model, "prompt").inc(step.usage.prompt_tokens)
            m.tokens.labels(route, step.model, "completion").inc(step.usage.completion_tokens)
            m.cost.labels(route, step.model).inc(cost)
        return rec.cost_usd

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


def _step_row(step: Step, cost: float) -> dict[str, Any]:
    return {
        "model": step.model,
        "prompt_tokens": step.usage.prompt_tokens,
        "completion_tokens": step.usage.completion_tokens,
        "cost_usd": cost,
        "endpoint": step.endpoint,
        **step.detail,
    }


def _headers(rec: RequestRecord, model: str | None, cost: float | None) -> dict[str, str]:
    h = {H_REQUEST_ID: rec.request_id, H_ROUTE: rec.route or "", H_MODEL: model or ""}
    if cost is not None:
        h[H_COST] = f"{cost:.10f}"
    if rec.fallbacks:
        h[H_FALLBACKS] = ",".join(rec.fallbacks)
    extra = rec.extra
    if "price_multiplier" in extra:
        h[H_MULTIPLIER] = f"{extra['price_multiplier']:.4g}"
    prediction = extra.get("predictions", {}).get(model)
    if prediction is not None:
        h[H_QUALITY] = f"{prediction['quality']:.4f}"
    if "cache" in extra:
        h[H_CACHE] = "hit" if extra["cache"]["hit"] else "miss"
    if "steps" in extra:
        h[H_STEPS] = ",".join(step["model"] for step in extra["steps"])
    return h


async def handle(request: Request, kind: Kind, runtime: Runtime, services: Services) -> Response:
    t0 = time.perf_counter()
    rec = RequestRecord(new_request_id(), time.time(), kind, stream=False)
    acct = Accounting(services, runtime, rec, t0)
    try:
        return await _handle(request, kind, runtime, rec, acct, t0, services)
    except StateUnavailable as exc:
        # Keys, budgets and rate limits cannot be checked: fail closed, and say it is passing.
        log.warning("request %s refused: %s", rec.request_id, exc)
        await acct.finish(status=503, model=rec.model, error=f"state store unavailable: {exc}")
        return state_unavailable(exc).response(_headers(rec, rec.model, None))
    except Exception as exc:
        # A bug must still give the client an OpenAI error and leave a request log row.
        log.exception("request %s failed inside the gateway", rec.request_id)
        await acct.finish(status=500, model=rec.model, error=f"internal error: {exc!r}")
        err = ApiError(500, "Internal error in the gateway", code="internal_error")
        return err.response(_headers(rec, rec.model, None))


async def _handle(
    request: Request,
    kind: Kind,
    runtime: Runtime,
    rec: RequestRecord,
    acct: Accounting,
    t0: float,
    services: Services,
) -> Response:
    try:
        rules = runtime.access
        key = await services.access.authenticate(
            request.headers.get("authorization"), rules, client_address(request)
        )
        if key is not None:
            rec.api_key_id, rec.team = key.id, key.team
        # Size and time limits are enforced while the body is read (gateway/http_limits.py).
        raw = await request.body()
        body = parse_request(raw, kind)
        rec.stream = bool(body.get("stream"))
        route, config = resolve(runtime, body["model"])
        rec.route = route
        access = services.access
        access.check_route(key, body["model"])
        cache = await _cache_lookup(services, config, route, kind, body, rec)
        if cache is not None and cache.hit is not None:
            return await _cached_response(cache, kind, body, acct)
        budgets = services.pacers.budgets(key, route, config, rec.ts)
        multiplier = await services.pacers.multiplier(key, route, config)
        # The prompt is walked once: budgets reserve on the bound, routers cost the typical.
        prompt_upper = prompt_tokens_upper(body)
        ctx = RouteContext(route or body["model"], multiplier, typical_from_upper(prompt_upper))
        decision, attempts = await plan(runtime, body, kind, route, ctx)
        cascade = runtime.cascades.get(route) if route else None
        if multiplier != 1.0:
            rec.extra["price_multiplier"] = multiplier
        if decision.predictions:
            rec.extra["predictions"] = decision.predictions
        acct.admission = await access.admit(
            key,
            budgets,
            body,
            prompt_upper,
            runtime.prices,
            runtime.policy.defaults,
            decision.models,
            rec.request_id,
            cascade,
        )
        allowed = acct.admission.models
        if allowed is not None and len(allowed) < len(attempts):
            rec.extra["skipped_for_budget"] = [a.model for a in attempts if a.model not in allowed]
            attempts = [a for a in attempts if a.model in allowed]
    except ApiError as err:
        await acct.finish(status=err.status, model=None, error=err.message)
        return err.response(_headers(rec, None, None))

    if cascade is not None:
        return await _run_cascade(cascade, kind, body, runtime, acct, t0, cache)
    try:
        if rec.stream:
            opened = time.monotonic()
            stream = await first_success(attempts, runtime.backends, _open_stream)
            limits = runtime.limits[stream.model]
            return _upstream_stream_response(stream, kind, body, acct, t0, cache, limits, opened)
        done = await first_success(attempts, runtime.backends, _complete)
    except ChainFailed as failed:
        paid = {"steps": failed.charged} if failed.charged else {}
        return await _failed(acct, failed.error, failed.model, fallbacks=failed.fallbacks, **paid)
    result = done.result
    answer = Step(done.model, result.usage, result.endpoint, result.provider_cost_usd)
    return await _answered(
        acct,
        cache,
        result.body,
        done.model,
        usage=result.usage,
        provider_cost=result.provider_cost_usd,
        endpoint=result.endpoint,
        fallbacks=done.fallbacks,
        # Models that answered 200 with no usable answer before this one are paid for too.
        steps=[*done.charged, answer] if done.charged else None,
        detail={"failed_endpoints": result.failed} if result.failed else None,
    )


async def _failed(acct: Accounting, err: UpstreamError, model: str, **finish: Any) -> Response:
    """Nothing answered: the client gets the upstream's error; what was spent is still charged."""
    await acct.finish(
        status=err.status,
        model=model,
        endpoint=",".join(err.attempts) or None,
        error=err.message,
        **finish,
    )
    api = ApiError(err.status, err.message, code=err.code, param=err.param)
    return api.response(_headers(acct.record, model, acct.record.cost_usd))


async def _answered(
    acct: Accounting, cache: CacheUse | None, body: dict[str, Any], model: str, **finish: Any
) -> Response:
    cost = await acct.finish(status=200, model=model, **finish)
    if cache is not None:
        await cache.store(body, model, cost)
    return Response(
        orjson.dumps(body),
        media_type="application/json",
        headers=_headers(acct.record, model, cost),
    )


async def _run_cascade(
    cascade: Cascade,
    kind: Kind,
    body: dict[str, Any],
    runtime: Runtime,
    acct: Accounting,
    t0: float,
    cache: CacheUse | None,
) -> Response:
    """A route whose answer may take several models: every step is charged, even on failure."""
    rec = acct.record
    try:
        if rec.stream:
            opened = time.monotonic()
            stream = await cascade.open_stream(kind, body, runtime.backends)
            # The streaming model's limits; EAD's combined name has none: its small model's.
            limits = runtime.limits.get(stream.model) or runtime.limits[cascade.models()[0]]
            return _cascade_stream_response(stream, kind, body, acct, t0, cache, limits, opened)
        result = await cascade.complete(kind, body, runtime.backends)
    except CascadeFailed as failed:
        return await _failed(acct, failed.error, failed.model, steps=failed.steps)
    return await _answered(
        acct,
        cache,
        result.body,
        result.model,
        steps=result.steps,
        detail=result.detail,
        endpoint=result.steps[-1].endpoint if result.steps else None,
    )


@dataclass(slots=True)
class CacheUse:
    """A cacheable request on a route with a response cache: its key, and the hit if any."""

    cache: ResponseCache
    key: str
    hit: CachedAnswer | None = None

    async def store(self, body: dict[str, Any], model: str, cost: float) -> None:
        # A cache that cannot store must not fail an answer that was already paid for.
        try:
            await self.cache.put(self.key, body, model, cost, time.time())
        except Exception:
            log.exception("storing an answer in the %s cache failed", self.cache.route)


async def _cache_lookup(
    services: Services,
    config: RouteConfig | None,
    route: str | None,
    kind: Kind,
    body: dict[str, Any],
    rec: RequestRecord,
) -> CacheUse | None:
    """The route's cache entry for this request, with the hit if any; None when the route has
    no cache or the request may not be cached (sampled, n > 1)."""
    if config is None or config.cache is None or route is None:
        return None
    cache = ResponseCache(services.access.state, route, config.cache)
    key = cache.key_for(kind, body, scope_id(config.cache, rec.api_key_id, rec.team))
    if key is None:
        return None
    use = CacheUse(cache, key)
    try:
        use.hit = await cache.get(key, time.time())
    except Exception:  # a cache that cannot answer is a miss, not a failed request
        log.exception("looking up the %s cache failed", route)
    if use.hit is None:
        rec.extra["cache"] = {"hit": False}
    return use


async def _cached_response(
    use: CacheUse, kind: Kind, body: dict[str, Any], acct: Accounting
) -> Response:
    """A hit costs nothing and calls no model; the log row says what it saved."""
    hit = use.hit
    assert hit is not None  # only called on a hit
    rec = acct.record
    rec.extra["cache"] = {"hit": True, "saved_usd": hit.cost_usd, "cached_at": hit.created_at}
    await acct.finish(status=200, model=hit.model, endpoint="cache")
    headers = _headers(rec, hit.model, 0.0)
    if not rec.stream:
        return Response(orjson.dumps(hit.body), media_type="application/json", headers=headers)
    wants_usage = _wants_usage(body)
    chunks = chunks_from_body(kind, hit.body)

    async def events() -> AsyncIterator[bytes]:
        for chunk in chunks:
            if chunk.get("choices") or wants_usage:
                yield b"data: " + orjson.dumps(chunk) + b"\n\n"
        yield f": {H_COST}={0.0:.10f}\n\ndata: [DONE]\n\n".encode()

    return StreamingResponse(events(), media_type="text/event-stream", headers=_sse(headers))


def _complete(backend: Any, call: UpstreamCall) -> Any:
    return backend.complete(call)


def _open_stream(backend: Any, call: UpstreamCall) -> Any:
    return backend.open_stream(call)


def _wants_usage(body: dict[str, Any]) -> bool:
    return bool((body.get("stream_options") or {}).get("include_usage"))


def _sse(headers: dict[str, str]) -> dict[str, str]:
    headers["cache-control"] = "no-cache"
    headers["x-accel-buffering"] = "no"
    return headers


Settle = Callable[[int, str | None], Awaitable[float]]


def _upstream_stream_response(
    outcome: Outcome[UpstreamStream],
    kind: Kind,
    body: dict[str, Any],
    acct: Accounting,
    t0: float,
    cache: CacheUse | None,
    limits: CallLimits,
    opened: float,
) -> StreamingResponse:
    stream = outcome.result
    acct.record.fallbacks = outcome.fallbacks
    failed = list(getattr(stream, "attempts", [])[:-1])  # endpoints that failed before it

    def settle(status: int, error: str | None) -> Awaitable[float]:
        answer = Step(outcome.model, stream.usage, stream.endpoint, stream.provider_cost_usd)
        return acct.finish(
            status=status,
            model=outcome.model,
            usage=stream.usage,
            provider_cost=stream.provider_cost_usd,
            endpoint=stream.endpoint,
            fallbacks=outcome.fallbacks,
            error=error,
            steps=[*outcome.charged, answer] if outcome.charged else None,
            detail={"failed_endpoints": failed} if failed else None,
        )

    return _stream_response(
        stream, outcome.model, settle, kind, body, acct, t0, cache, limits, opened
    )


def _cascade_stream_response(
    stream: CascadeStream,
    kind: Kind,
    body: dict[str, Any],
    acct: Accounting,
    t0: float,
    cache: CacheUse | None,
    limits: CallLimits,
    opened: float,
) -> StreamingResponse:
    def settle(status: int, error: str | None) -> Awaitable[float]:
        last = stream.steps[-1].endpoint if stream.steps else None
        return acct.finish(
            status=status,
            model=stream.model,
            steps=stream.steps,
            detail=stream.detail,
            endpoint=last,
            error=error,
        )

    return _stream_response(
        stream, stream.model, settle, kind, body, acct, t0, cache, limits, opened
    )


async def _within(
    chunks: AsyncIterator[dict[str, Any]], limits: CallLimits, opened: float
) -> AsyncIterator[dict[str, Any]]:
    """The stream's chunks, cut (UpstreamError 504) past its deadline, `stream_timeout_s` after
    the first upstream call, or after a gap of `stream_idle_timeout_s` between two chunks."""
    total = limits.stream_timeout_s or limits.timeout_s
    deadline = opened + total
    idle = limits.stream_idle_timeout_s
    while True:
        left = deadline - time.monotonic()
        by_deadline = idle is None or left <= idle
        try:
            async with asyncio.timeout(max(left, 0.0) if by_deadline else idle):
                chunk = await anext(chunks)
        except StopAsyncIteration:
            return
        except TimeoutError:
            why = (
                f"the stream ran past its deadline of {total:g} s (stream_timeout_s)"
                if by_deadline
                else f"no chunk came for {idle:g} s (stream_idle_timeout_s)"
            )
            raise UpstreamError(504, f"stream cut: {why}", "upstream_timeout") from None
        yield chunk


def _stream_response(
    stream: UpstreamStream | CascadeStream,
    model: str,
    settle: Settle,
    kind: Kind,
    body: dict[str, Any],
    acct: Accounting,
    t0: float,
    cache: CacheUse | None,
    limits: CallLimits,
    opened: float,
) -> StreamingResponse:
    rec = acct.record
    rec.ttft_ms = (time.perf_counter() - t0) * 1000
    wants_usage = _wants_usage(body)
    kept: list[dict[str, Any]] | None = [] if cache is not None else None

    async def events() -> AsyncIterator[bytes]:
        status, error = 499, "client disconnected"  # unless the stream runs to its end
        try:
            async for chunk in _within(aiter(stream), limits, opened):
                if kept is not None:
                    kept.append(chunk)
                if not chunk.get("choices") and chunk.get("usage") and not wants_usage:
                    continue  # the client did not ask for the usage chunk
                yield b"data: " + orjson.dumps(chunk) + b"\n\n"
            status, error = 200, None
        except Exception as exc:  # the upstream broke or was cut: tell the client in-band
            status, error = 502, str(exc)
            api = ApiError(502, f"upstream stream failed: {exc}", code="upstream_error")
            if isinstance(exc, UpstreamError):
                status = exc.status
                api = ApiError(exc.status, exc.message, code=exc.code, param=exc.param)
            yield b"data: " + api.body() + b"\n\n"
        finally:
            # Shielded: on a client disconnect this task is being cancelled, and closing the
            # upstream (which aborts generation there), settling the budget and the request
            # log row must still happen.
            with anyio.CancelScope(shield=True):
                await stream.aclose()
                cost = await settle(status, error)
                if cache is not None and kept is not None and status == 200:
                    await cache.store(body_from_chunks(kind, kept), model, cost)
        # Streams cannot carry the final cost in a header: it comes as an SSE comment, which
        # OpenAI clients ignore, and in the request log.
        yield f": {H_COST}={cost:.10f}\n\ndata: [DONE]\n\n".encode()

    headers = _headers(rec, model, None)
    return StreamingResponse(events(), media_type="text/event-stream", headers=_sse(headers))
