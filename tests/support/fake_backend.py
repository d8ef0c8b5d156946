"""A fake `Backend` for in-process tests, after httpx's MockTransport: a handler function answers
every call, so the whole app runs with no upstream, socket or process.

The handler takes the `UpstreamCall` (kind and body, as the gateway sends it) and returns a
`Reply`, or raises `UpstreamError` (`fail()` builds one by the backends' own rule). The backend
renders the reply in the OpenAI shape the call asks for: a whole response, or stream chunks with
a final usage chunk; logprobs only when the call asks for them, as vLLM does.
"""

from __future__ import annotations

import inspect
import itertools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.backends.base import (
    Completion,
    Kind,
    UpstreamCall,
    UpstreamError,
    Usage,
    http_error,
)
from gateway.backends.openai_shapes import embeddings_as


@dataclass(slots=True)
class Reply:
    """One answer. `logprobs`: one per word of `text` (the fake's tokens), used when asked."""

    text: str = "ok"
    logprobs: list[float] | None = None
    prompt_tokens: int = 7
    completion_tokens: int = 5
    # Of prompt_tokens, those read from the prefix cache (`prompt_tokens_details`, as vLLM
    # with --enable-prompt-tokens-details and OpenAI report them); 0: no details sent.
    cached_tokens: int = 0
    finish_reason: str = "stop"
    provider_cost_usd: float | None = None
    # Chat only: an assistant's tool calls, as (name, arguments JSON) or OpenAI-shaped dicts
    # ({"id", "type", "function": {...}}); the message has them beside `text` (None if empty).
    tool_calls: list[tuple[str, str] | dict[str, Any]] | None = None

    def pieces(self) -> list[str]:
        words = self.text.split(" ")
        return [w if i == 0 else " " + w for i, w in enumerate(words)]


Handler = Callable[[UpstreamCall], Reply | Awaitable[Reply]]


def fail(status: int = 503, message: str = "the fake upstream is down") -> UpstreamError:
    """The error a real backend raises for an upstream answering `status` (retryable or not)."""
    return http_error(status, message, None, None, "fake")


def _logprobs(kind: Kind, pieces: list[str], values: list[float]) -> dict[str, Any]:
    if kind == "chat":
        content = [
            {"token": p, "logprob": v, "bytes": None, "top_logprobs": [{"token": p, "logprob": v}]}
            for p, v in zip(pieces, values, strict=False)
        ]
        return {"content": content}
    return {
        "tokens": pieces,
        "token_logprobs": values[: len(pieces)],
        "top_logprobs": [{p: v} for p, v in zip(pieces, values, strict=False)],
        "text_offset": list(itertools.accumulate([0, *map(len, pieces[:-1])])),
    }


def _usage(reply: Reply) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "total_tokens": reply.prompt_tokens + reply.completion_tokens,
    }
    if reply.cached_tokens:
        usage["prompt_tokens_details"] = {"cached_tokens": reply.cached_tokens}
    return usage


def _wants_logprobs(call: UpstreamCall) -> bool:
    return bool(call.body.get("logprobs"))


def fake_vector(item: Any) -> list[float]:
    """The fake's embedding of one input (a string or a token array): its length, then its
    first character or token, so equal inputs give equal vectors and a test can tell them."""
    first = (ord(item[0]) if isinstance(item, str) else item[0]) if item else 0
    return [float(len(item)), float(first), 0.5]


def embeddings_body(name: str, call: UpstreamCall, reply: Reply) -> dict[str, Any]:
    """An embeddings answer as vLLM gives it: one vector per input, base64 when asked."""
    inputs = call.body["input"]
    items = inputs if isinstance(inputs, list) and not isinstance(inputs[0], int) else [inputs]
    data = [
        {"object": "embedding", "index": i, "embedding": fake_vector(item)}
        for i, item in enumerate(items)
    ]
    body = {
        "id": f"embd-{uuid.uuid4().hex[:12]}",
        "object": "list",
        "created": 1_800_000_000,
        "model": name,
        "data": data,
        "usage": {"prompt_tokens": reply.prompt_tokens, "total_tokens": reply.prompt_tokens},
    }
    return embeddings_as(body, call.body.get("encoding_format"))


def _calls(reply: Reply) -> list[dict[str, Any]]:
    return [
        c
        if isinstance(c, dict)
        else {"id": f"call-{i}", "type": "function", "function": {"name": c[0], "arguments": c[1]}}
        for i, c in enumerate(reply.tool_calls or [])
    ]


def response_body(name: str, call: UpstreamCall, reply: Reply) -> dict[str, Any]:
    """The whole OpenAI response for `reply`, `model` set to the policy model name."""
    if call.kind == "embeddings":
        return embeddings_body(name, call, reply)
    lp = _logprobs(call.kind, reply.pieces(), reply.logprobs) if reply.logprobs else None
    lp = lp if _wants_logprobs(call) else None
    if call.kind == "chat":
        message: dict[str, Any] = {"role": "assistant", "content": reply.text or None}
        if reply.tool_calls:
            message["tool_calls"] = _calls(reply)
        choice: dict[str, Any] = {"index": 0, "message": message, "logprobs": lp}
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": reply.text, "logprobs": lp}
        obj = "text_completion"
    choice["finish_reason"] = "tool_calls" if reply.tool_calls else reply.finish_reason
    return {
        "id": f"fake-{uuid.uuid4().hex[:12]}",
        "object": obj,
        "created": 1_800_000_000,
        "model": name,
        "choices": [choice],
        "usage": _usage(reply),
    }


def stream_chunks(name: str, call: UpstreamCall, reply: Reply) -> list[dict[str, Any]]:
    """The chunks OpenAI sends for `reply` with `stream_options.include_usage` on."""
    pieces = reply.pieces() if reply.text else []
    values = reply.logprobs if reply.logprobs and _wants_logprobs(call) else None
    base = {"id": f"fake-{uuid.uuid4().hex[:12]}", "created": 1_800_000_000, "model": name}
    obj = "chat.completion.chunk" if call.kind == "chat" else "text_completion"
    out = []
    for i, piece in enumerate(pieces):
        lp = _logprobs(call.kind, [piece], [values[i]]) if values and i < len(values) else None
        finish = reply.finish_reason if i == len(pieces) - 1 and not reply.tool_calls else None
        if call.kind == "chat":
            delta = {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
            choice: dict[str, Any] = {"index": 0, "delta": delta}
        else:
            choice = {"index": 0, "text": piece}
        choice.update(logprobs=lp, finish_reason=finish)
        out.append({**base, "object": obj, "choices": [choice]})
    for i, call_ in enumerate(_calls(reply) if call.kind == "chat" else []):
        # The id and name first, then the arguments in two pieces, as OpenAI streams them.
        arguments = call_["function"]["arguments"]
        half = len(arguments) // 2
        first = {**call_, "function": {**call_["function"], "arguments": ""}}
        deltas = [
            {"index": i, **first},
            {"index": i, "function": {"arguments": arguments[:half]}},
            {"index": i, "function": {"arguments": arguments[half:]}},
        ]
        for delta in deltas:
            choice = {"index": 0, "delta": {"tool_calls": [delta]}, "finish_reason": None}
            out.append({**base, "object": obj, "choices": [choice]})
    if reply.tool_calls and call.kind == "chat":
        end = {"index": 0, "delta": {}, "finish_reason": "tool_calls"}
        out.append({**base, "object": obj, "choices": [end]})
    out.append({**base, "object": obj, "choices": [], "usage": _usage(reply)})
    return out


class FakeStream:
    """An open fake stream (an `UpstreamStream`); usage turns exact at the usage chunk."""

    def __init__(self, endpoint: str, chunks: list[dict[str, Any]], reply: Reply):
        self.endpoint = endpoint
        self.usage = Usage(reply.prompt_tokens, 0, exact=False)
        self.provider_cost_usd = reply.provider_cost_usd
        self.closed = False
        self._chunks = chunks

    async def _iter(self) -> AsyncIterator[dict[str, Any]]:
        for chunk in self._chunks:
            if self.closed:
                return
            if chunk.get("usage"):
                self.usage.completion_tokens = chunk["usage"]["completion_tokens"]
                details = chunk["usage"].get("prompt_tokens_details") or {}
                self.usage.cached_tokens = details.get("cached_tokens", 0)
                self.usage.exact = True
            elif chunk.get("choices"):
                self.usage.completion_tokens += 1
            yield chunk

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._iter()

    async def aclose(self) -> None:
        self.closed = True


@dataclass
class FakeBackend:
    """A `Backend` whose every call is answered by `handler`; `calls` records what it was sent."""

    name: str
    handler: Handler
    is_healthy: bool = True
    calls: list[UpstreamCall] = field(default_factory=list)
    streams: list[FakeStream] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return f"fake://{self.name}"

    def healthy(self) -> bool:
        return self.is_healthy

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def _reply(self, call: UpstreamCall) -> Reply:
        self.calls.append(call)
        try:
            answer = self.handler(call)
            return await answer if inspect.isawaitable(answer) else answer
        except UpstreamError as err:
            if not err.attempts or err.attempts == ["fake"]:
                err.attempts = [self.endpoint]
            raise

    async def complete(self, call: UpstreamCall) -> Completion:
        reply = await self._reply(call)
        completion = 0 if call.kind == "embeddings" else reply.completion_tokens
        usage = Usage(reply.prompt_tokens, completion, exact=True)
        usage.cached_tokens = reply.cached_tokens
        body = response_body(self.name, call, reply)
        return Completion(body, usage, self.endpoint, reply.provider_cost_usd)

    async def open_stream(self, call: UpstreamCall) -> FakeStream:
        reply = await self._reply(call)
        stream = FakeStream(self.endpoint, stream_chunks(self.name, call, reply), reply)
        self.streams.append(stream)
        return stream


class FakeBackends:
    """A `BackendFactory` (Settings.backend_factory): each policy model gets one FakeBackend,
    kept across policy reloads so a test sees every call. A model without a handler answers
    "hi from <name>"."""

    def __init__(self, handlers: Mapping[str, Handler] | None = None):
        self._handlers = dict(handlers or {})
        self.backends: dict[str, FakeBackend] = {}

    def __call__(self, name: str, config: Any) -> FakeBackend:
        if name not in self.backends:
            handler = self._handlers.get(name) or _greeter(name)
            self.backends[name] = FakeBackend(name, handler)
        return self.backends[name]

    def __getitem__(self, name: str) -> FakeBackend:
        return self.backends[name]


def _greeter(name: str) -> Handler:
    def handler(call: UpstreamCall) -> Reply:
        return Reply(f"hi from {name}")

    return handler
