"""Every backend call as an OpenTelemetry CLIENT span, with the trace context sent upstream.

Only used when tracing is on: the pipeline hands the chain or the cascade `TracedBackends`
instead of the runtime's backends, for that one request. Each call gets a span named as the
GenAI semantic conventions say ("{operation} {model}") under the span given as `parent`
(explicitly, not the current context: an EAD stream calls its models while the client reads,
outside the request's task context), and its `traceparent` goes to the upstream in the call's
headers (gateway/backends/http_client.py sends them; litellm as extra headers).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Tracer

from gateway.backends.base import (
    Backend,
    ChatRendering,
    Completion,
    UpstreamCall,
    UpstreamError,
    UpstreamStream,
    Usage,
)
from gateway.tracing import OPERATION, fail, inject, request_attributes
from policies.pricing import CostFn


def provider_of(backend: Backend) -> str:
    """The GenAI provider name a backend calls ("vllm", or litellm's provider: "openai"...)."""
    named = getattr(backend, "provider", None)
    return named if isinstance(named, str) and named else type(backend).__name__


class TracedBackends(Mapping[str, Backend]):
    """The runtime's backends, for one request, each call a span under `parent`. In a
    cascade (`cascade`: its route), each call is one numbered step."""

    __slots__ = ("_backends", "_cascade", "_parent", "_prices", "_steps", "_tracer", "_wrapped")

    def __init__(
        self,
        backends: Mapping[str, Backend],
        tracer: Tracer,
        parent: Context,
        prices: Mapping[str, CostFn],
        cascade: str | None = None,
    ):
        self._backends = backends
        self._tracer = tracer
        self._parent = parent
        self._prices = prices
        self._cascade = cascade
        self._steps = 0
        self._wrapped: dict[str, Backend] = {}

    def __getitem__(self, name: str) -> Backend:
        wrapped = self._wrapped.get(name)
        if wrapped is None:
            inner = self._backends[name]
            kind = TracedRenderingBackend if isinstance(inner, ChatRendering) else TracedBackend
            wrapped = self._wrapped[name] = kind(self, inner)
        return wrapped

    def __iter__(self) -> Iterator[str]:
        return iter(self._backends)

    def __len__(self) -> int:
        return len(self._backends)

    # -- spans ------------------------------------------------------------------------------
    def start(self, backend: Backend, call: UpstreamCall, stream: bool) -> Span:
        op = OPERATION[call.kind]
        provider = provider_of(backend)
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": op,
            "gen_ai.provider.name": provider,
            "gen_ai.system": provider,  # the attribute's older name, which many tools still read
            "gen_ai.request.model": backend.name,
            "routegate.stream": stream,
            **request_attributes(call.body),
        }
        if self._cascade is not None:
            attributes["routegate.cascade.route"] = self._cascade
            attributes["routegate.cascade.step"] = self._steps
            self._steps += 1
        name = f"{op} {backend.name}"
        return self._tracer.start_span(
            name, context=self._parent, kind=SpanKind.CLIENT, attributes=attributes
        )

    def answered(
        self,
        span: Span,
        model: str,
        usage: Usage,
        endpoint: str,
        provider_cost: float | None,
        body: Mapping[str, Any] | None = None,
    ) -> None:
        """The usage, cost and answering endpoint of a call that was answered."""
        span.set_attribute("http.response.status_code", 200)
        _usage(span, usage)
        price = self._prices.get(model)
        cost = (
            price(usage.prompt_tokens, usage.completion_tokens, provider_cost, usage.cached_tokens)
            if price
            else None
        )
        if cost is None:
            cost = provider_cost
        if cost is not None:
            span.set_attribute("routegate.cost_usd", cost)
        if provider_cost is not None:
            span.set_attribute("routegate.provider_cost_usd", provider_cost)
        _endpoint(span, endpoint)
        if body is None:
            return
        response_model, response_id = body.get("model"), body.get("id")
        if isinstance(response_model, str):
            span.set_attribute("gen_ai.response.model", response_model)
        if isinstance(response_id, str):
            span.set_attribute("gen_ai.response.id", response_id)
        reasons = [
            c["finish_reason"]
            for c in body.get("choices") or ()
            if isinstance(c, dict) and isinstance(c.get("finish_reason"), str)
        ]
        if reasons:
            span.set_attribute("gen_ai.response.finish_reasons", reasons)

    def failed(self, span: Span, exc: BaseException) -> None:
        if isinstance(exc, UpstreamError):
            fail(span, exc.code, exc.message)
            span.set_attribute("routegate.error_status", exc.status)
            if exc.attempts:
                span.set_attribute("routegate.endpoints_tried", exc.attempts)
            if exc.usage is not None:  # answered, but no answer: still paid for
                _usage(span, exc.usage)
        else:
            fail(span, type(exc).__qualname__, str(exc) or None)


def _usage(span: Span, usage: Usage) -> None:
    span.set_attribute("gen_ai.usage.input_tokens", usage.prompt_tokens)
    span.set_attribute("gen_ai.usage.output_tokens", usage.completion_tokens)
    span.set_attribute("routegate.usage_exact", usage.exact)


def _endpoint(span: Span, endpoint: str) -> None:
    span.set_attribute("routegate.endpoint", endpoint)
    if endpoint.startswith(("http://", "https://")):
        url = urlsplit(endpoint)
        if url.hostname:
            span.set_attribute("server.address", url.hostname)
        if url.port:
            span.set_attribute("server.port", url.port)


def _traced_call(call: UpstreamCall, span: Span) -> UpstreamCall:
    """The call, with the span's trace context among its headers."""
    headers = {**(call.headers or {}), **inject(span)}
    return dataclasses.replace(call, headers=headers)


class TracedBackend:
    """One backend, its calls spanned; the rest is the backend's own."""

    __slots__ = ("_calls", "_inner", "name")

    def __init__(self, calls: TracedBackends, inner: Backend):
        self._calls = calls
        self._inner = inner
        self.name = inner.name

    def __getattr__(self, attr: str) -> Any:  # anything else a caller reads of the backend
        return getattr(self._inner, attr)

    def healthy(self) -> bool:
        return self._inner.healthy()

    async def start(self) -> None:
        await self._inner.start()

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def complete(self, call: UpstreamCall) -> Completion:
        calls = self._calls
        span = calls.start(self._inner, call, stream=False)
        try:
            done = await self._inner.complete(_traced_call(call, span))
        except BaseException as exc:
            calls.failed(span, exc)
            span.end()
            raise
        cost = done.provider_cost_usd
        calls.answered(span, self.name, done.usage, done.endpoint, cost, done.body)
        if done.failed:
            span.set_attribute("routegate.failed_endpoints", done.failed)
        span.end()
        return done

    async def open_stream(self, call: UpstreamCall) -> UpstreamStream:
        calls = self._calls
        span = calls.start(self._inner, call, stream=True)
        try:
            stream = await self._inner.open_stream(_traced_call(call, span))
        except BaseException as exc:
            calls.failed(span, exc)
            span.end()
            raise
        return TracedStream(calls, span, self.name, stream)


class TracedRenderingBackend(TracedBackend):
    """A backend that renders chats (ChatRendering, for EAD), spanned the same."""

    __slots__ = ()

    async def render_chat(
        self, messages: list[dict[str, Any]], timeout_s: float, retries: int
    ) -> str | None:
        inner = self._inner
        assert isinstance(inner, ChatRendering)  # chosen for it by TracedBackends
        return await inner.render_chat(messages, timeout_s, retries)


class TracedStream:
    """An upstream stream whose span ends with it (its end, or its close), with its usage."""

    __slots__ = ("_calls", "_ended", "_finished", "_inner", "_model", "_span")

    def __init__(self, calls: TracedBackends, span: Span, model: str, inner: UpstreamStream):
        self._calls = calls
        self._span = span
        self._model = model
        self._inner = inner
        self._ended = False
        self._finished = False  # iterated to its end

    def __getattr__(self, attr: str) -> Any:  # endpoint, usage, provider_cost_usd, attempts...
        return getattr(self._inner, attr)

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[dict[str, Any]]:
        try:
            async for chunk in self._inner:
                yield chunk
        except Exception as exc:
            self._end(exc)
            raise
        self._finished = True
        self._end(None)

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self._end(None)

    def _end(self, exc: BaseException | None) -> None:
        if self._ended:
            return
        self._ended = True
        inner, span = self._inner, self._span
        if exc is not None:
            self._calls.failed(span, exc)
            _usage(span, inner.usage)  # what was streamed before it broke
        else:
            self._calls.answered(
                span, self._model, inner.usage, inner.endpoint, inner.provider_cost_usd
            )
            span.set_attribute("gen_ai.response.model", self._model)  # chunks carry its name
            if not self._finished:
                span.set_attribute("routegate.stream.closed_early", True)
        failed = list(getattr(inner, "attempts", [])[:-1])
        if failed:
            span.set_attribute("routegate.failed_endpoints", failed)
        span.end()
