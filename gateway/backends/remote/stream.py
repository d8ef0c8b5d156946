"""An open litellm stream, re-shaped to the chunks OpenAI sends with `include_usage`."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, Protocol

import httpx

from gateway.backends import openai_shapes as shapes
from gateway.backends.base import Kind, UpstreamCall, UpstreamError, Usage
from gateway.backends.remote.errors import to_upstream_error
from gateway.backends.remote.shaping import drop_none, dump, usage_of
from gateway.backends.usage_bounds import estimated_usage
from gateway.provider_prices import litellm_cost_usd
from gateway.tokens import CallBound
from policies.schema import LitellmModel

_CLOSE_TIMEOUT_S = 2.0


class StreamOwner(Protocol):
    """What a stream reads of the backend that opened it (LitellmBackend)."""

    name: str
    endpoint: str
    config: LitellmModel

    def bound_of(self, call: UpstreamCall) -> CallBound: ...

    def prompt_tokens_estimate(self, body: dict[str, Any], kind: Kind) -> int: ...


async def close_chain(obj: Any) -> None:
    """Close a litellm stream and everything it wraps, innermost first.

    litellm nests streams in async generators (three deep for text completions) whose
    `async for` never closes what it iterates, so closing the outer one leaves the HTTP
    response open until garbage collection. The suspended generators' frames lead to it.
    """
    import openai

    def stream_like(v: Any) -> bool:
        return (
            inspect.isasyncgen(v)
            or hasattr(v, "completion_stream")  # litellm's stream wrappers
            or isinstance(v, openai.AsyncStream | httpx.Response)
        )

    order: list[Any] = []
    seen: set[int] = set()

    def visit(o: Any, depth: int) -> None:
        if id(o) in seen or depth > 8:
            return
        seen.add(id(o))
        inner: list[Any] = []
        if inspect.isasyncgen(o):
            if o.ag_frame is not None:
                inner = [v for v in o.ag_frame.f_locals.values() if stream_like(v)]
        elif hasattr(o, "completion_stream"):
            inner = [o.completion_stream]
        for v in inner:
            if v is not None:
                visit(v, depth + 1)
        order.append(o)

    visit(obj, 0)
    for o in order:
        with contextlib.suppress(Exception):  # RuntimeError too: a generator still running
            closer = getattr(o, "aclose", None) or getattr(o, "close", None)
            if closer is not None:
                result = closer()
                if inspect.isawaitable(result):
                    await result


class LitellmStream:
    """An open litellm stream, re-shaped to OpenAI's chunks; see UpstreamStream."""

    def __init__(self, backend: StreamOwner, call: UpstreamCall):
        self._backend = backend
        self._call = call
        self.endpoint = backend.endpoint
        self.provider_cost_usd: float | None = None
        self.attempts: list[str] = []
        self.raw: Any = None  # litellm's stream
        self._usage = Usage()
        self._prompt_estimated = False
        self._pending: deque[dict[str, Any]] = deque()
        self._template: dict[str, Any] = {}  # id/object/created of the last chunk
        self._ended = False  # litellm's stream ran out
        self._closed = False
        self._saw_usage = False
        self._saw_chunk = False

    @property
    def usage(self) -> Usage:
        # The prompt is tokenized only if the stream ends without its usage chunk.
        if not self._usage.exact and not self._prompt_estimated:
            self._prompt_estimated = True
            self._usage.prompt_tokens = self._backend.prompt_tokens_estimate(
                self._call.body, self._call.kind
            )
        return self._usage

    @usage.setter
    def usage(self, value: Usage) -> None:
        self._usage = value

    async def prime(self) -> None:
        while not self._pending and not self._ended:
            await self._pull()
        if not self._saw_chunk:
            raise UpstreamError(502, f"{self._backend.name} ended the stream before any data")

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self

    async def __anext__(self) -> dict[str, Any]:
        while not self._pending:
            if self._closed or self._ended:
                raise StopAsyncIteration
            try:
                await self._pull()
            except Exception as exc:
                await self.aclose()
                raise to_upstream_error(exc, self._backend.name, self.endpoint) from None
        return self._pending.popleft()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._pending.clear()
        raw, self.raw = self.raw, None
        if raw is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                    await close_chain(raw)

    async def _pull(self) -> None:
        try:
            chunk = await self.raw.__anext__()
        except StopAsyncIteration:
            self._ended = True
            if self._saw_chunk and not self._saw_usage:
                # The provider reported no usage: send the estimate in OpenAI's place for it.
                u = self.usage
                self._usage = u = estimated_usage(
                    u.prompt_tokens, u.completion_tokens, self._backend.bound_of(self._call)
                )
                self._pending.append(self._usage_chunk(u.prompt_tokens, u.completion_tokens))
            return
        data = dump(chunk)
        self._saw_chunk = True
        if self._call.kind == "chat":
            choices, produced = self._chat_choices(data.get("choices") or [])
        else:
            choices, produced = self._text_choices(data.get("choices") or [])
        self._template = {k: data[k] for k in ("id", "object", "created") if k in data}
        if not self._usage.exact:
            self._usage.completion_tokens += produced
        if choices:
            fingerprint = data.get("system_fingerprint")
            tail = {"system_fingerprint": fingerprint} if fingerprint else {}
            head = {**self._template, "model": self._backend.name}
            self._pending.append(shapes.with_choices(head, choices, **tail))
        usage = usage_of(data.get("usage"), self._backend.bound_of(self._call))
        if usage is not None and not self._saw_usage:
            self._saw_usage = True
            self._usage.prompt_tokens = usage.prompt_tokens
            self._usage.completion_tokens = usage.completion_tokens
            self._usage.cached_tokens = usage.cached_tokens
            self._usage.exact = True
            self._usage.anomaly = usage.anomaly
            self.provider_cost_usd = litellm_cost_usd(
                self._backend.config.model,
                usage.prompt_tokens,
                usage.completion_tokens,
                usage.cached_tokens,
            )
            final = self._usage_chunk(usage.prompt_tokens, usage.completion_tokens)
            final["usage"] = shapes.usage_object(usage)
            if usage.anomaly is None:
                final["usage"] = drop_none(data["usage"])  # with the provider's token details
            self._pending.append(final)

    def _usage_chunk(self, prompt: int, completion: int) -> dict[str, Any]:
        head = shapes.header(
            self._template.get("id", ""),
            self._template.get("object", shapes.chunk_object(self._call.kind)),
            self._template.get("created", int(time.time())),
            self._backend.name,
        )
        return shapes.with_choices(head, [], usage=shapes.usage_dict(prompt, completion))

    @staticmethod
    def _chat_choices(raw: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
        """Choices worth sending (litellm pads usage chunks with an empty one) and how many
        carried generated text (about a token each)."""
        out, produced = [], 0
        for c in raw:
            delta = drop_none(c.get("delta") or {})
            delta.pop("provider_specific_fields", None)
            if not delta and c.get("finish_reason") is None and c.get("logprobs") is None:
                continue
            if delta.get("content") or delta.get("tool_calls") or delta.get("reasoning_content"):
                produced += 1
            out.append(
                shapes.delta_choice(
                    c.get("index", 0), delta, c.get("finish_reason"), c.get("logprobs")
                )
            )
        return out, produced

    @staticmethod
    def _text_choices(raw: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
        out, produced = [], 0
        for c in raw:
            text = c.get("text") or ""
            if not text and c.get("finish_reason") is None and c.get("logprobs") is None:
                continue
            produced += 1 if text else 0
            out.append(
                shapes.text_choice(
                    c.get("index", 0), text, c.get("logprobs"), c.get("finish_reason")
                )
            )
        return out, produced
