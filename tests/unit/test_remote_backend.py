"""LitellmBackend against a real OpenAI-compatible HTTP server started in-process.

The fake upstream runs uvicorn in a thread. What it does is chosen by the model name the
backend sends (`openai/<mode>` in the policy): `fail500`, `bad400`, `limit429`, `slow`,
`gate` (first chunk, then waits), `drip` (a chunk every 50 ms), `nousage`, `flaky` (500 once);
any other name answers normally.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from gateway.backends.base import Kind, UpstreamCall, UpstreamError
from gateway.backends.remote import LitellmBackend, LitellmStream
from gateway.provider_prices import litellm_cost_usd, load_litellm
from policies.schema import LitellmModel

# One event loop for the module: litellm caches HTTP clients per loop.
pytestmark = pytest.mark.asyncio(loop_scope="module")

PROMPT_TOKENS, COMPLETION_TOKENS = 11, 7  # what the fake upstream reports, unlike any estimate
KEY_VAR = "ROUTEGATE_TEST_REMOTE_KEY"


@dataclass
class Upstream:
    port: int
    requests: list[dict[str, Any]] = field(default_factory=list)
    disconnected: threading.Event = field(default_factory=threading.Event)
    gate: threading.Event = field(default_factory=threading.Event)
    flaky_failures: int = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def reset(self) -> None:
        self.requests.clear()
        self.disconnected.clear()
        self.gate.clear()
        self.flaky_failures = 0


CACHED_MODEL, CACHED_TOKENS = "gpt-4o", 8  # a model litellm knows a cache-read price of


def _usage(model: str = "") -> dict[str, Any]:
    total = PROMPT_TOKENS + COMPLETION_TOKENS
    usage: dict[str, Any] = {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": COMPLETION_TOKENS,
        "total_tokens": total,
    }
    if model == CACHED_MODEL:  # as OpenAI reports a prompt read from its prompt cache
        usage["prompt_tokens_details"] = {"cached_tokens": CACHED_TOKENS}
    return usage


def _error(status: int, message: str, param: str | None = None) -> JSONResponse:
    err = {
        "message": message,
        "type": "invalid_request_error",
        "param": param,
        "code": f"c{status}",
    }
    return JSONResponse({"error": err}, status)


def _chunk(kind: str, model: str, piece: str | None, finish: str | None = None) -> dict[str, Any]:
    if kind == "chat":
        delta = {} if piece is None else {"content": piece}
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
        obj = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": piece or "", "finish_reason": finish, "logprobs": None}
        obj = "text_completion"
    return {"id": "up-1", "object": obj, "created": 1, "model": model, "choices": [choice]}


def _app(up: Upstream) -> FastAPI:
    app = FastAPI()

    async def handle(request: Request, kind: str) -> Any:
        body = await request.json()
        up.requests.append({"kind": kind, "body": body, "headers": dict(request.headers)})
        model = body["model"]
        if model == "fail500" or (model == "flaky" and up.flaky_failures == 0):
            up.flaky_failures += 1
            return _error(500, "upstream exploded")
        if model == "bad400":
            return _error(400, "temperature is out of range", param="temperature")
        if model == "limit429":
            return _error(429, "slow down")
        if model == "slow":
            await asyncio.sleep(3)
        if body.get("stream"):
            return StreamingResponse(stream(kind, model, body), media_type="text/event-stream")
        if kind == "chat":
            message = {"role": "assistant", "content": "Hello world"}
            choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": "stop"}
            if body.get("logprobs"):
                top = [{"token": "Hello", "logprob": -0.1, "bytes": None}]
                content = [{"token": "Hello", "logprob": -0.1, "bytes": None, "top_logprobs": top}]
                choice["logprobs"] = {"content": content, "refusal": None}
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": "Hello world", "finish_reason": "stop", "logprobs": None}
            if body.get("logprobs"):
                choice["logprobs"] = {
                    "tokens": ["Hello", " world"],
                    "token_logprobs": [-0.1, -0.2],
                    "top_logprobs": [{"Hello": -0.1}, {" world": -0.2}],
                    "text_offset": [0, 5],
                }
            obj = "text_completion"
        return {
            "id": "up-1",
            "object": obj,
            "created": 1,
            "model": model,
            "choices": [choice],
            "usage": _usage(model),
        }

    async def stream(kind: str, model: str, body: dict[str, Any]) -> AsyncIterator[str]:
        finished = False
        try:
            pieces = ["Hello", " world"] if model != "drip" else ["tok"] * 200
            for i, piece in enumerate(pieces):
                chunk = _chunk(kind, model, piece)
                if kind == "chat" and i == 0:
                    chunk["choices"][0]["delta"]["role"] = "assistant"
                yield f"data: {json.dumps(chunk)}\n\n"
                if model == "gate" and i == 0:
                    while not up.gate.is_set():
                        await asyncio.sleep(0.01)
                if model == "drip":
                    await asyncio.sleep(0.05)
            yield f"data: {json.dumps(_chunk(kind, model, None, 'stop'))}\n\n"
            wants_usage = (body.get("stream_options") or {}).get("include_usage")
            if wants_usage and model != "nousage":
                last = _chunk(kind, model, None) | {"choices": [], "usage": _usage(model)}
                yield f"data: {json.dumps(last)}\n\n"
            yield "data: [DONE]\n\n"
            finished = True
        finally:
            if not finished:  # the client went away mid-stream
                up.disconnected.set()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        return await handle(request, "chat")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        return await handle(request, "completions")

    return app


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def upstream_server() -> Iterator[Upstream]:
    load_litellm()  # as LitellmBackend.start() does at policy load: seconds, once
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    up = Upstream(port=sock.getsockname()[1])
    config = uvicorn.Config(
        _app(up), log_level="warning", lifespan="off", timeout_graceful_shutdown=1
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    yield up
    server.should_exit = True
    thread.join(timeout=5)
    sock.close()


@pytest.fixture
def upstream(upstream_server: Upstream, monkeypatch: pytest.MonkeyPatch) -> Upstream:
    upstream_server.reset()
    monkeypatch.setenv(KEY_VAR, "sk-test-123")
    return upstream_server


def backend(mode: str, base: str, *, key_var: str | None = KEY_VAR) -> LitellmBackend:
    config = LitellmModel.model_validate(
        {"provider": "litellm", "model": f"openai/{mode}", "api_key_env": key_var, "api_base": base}
    )
    return LitellmBackend("policy-name", config)


CHAT_BODY: dict[str, Any] = {
    "model": "policy-name",
    "messages": [{"role": "user", "content": "Hi there"}],
}
TEXT_BODY: dict[str, Any] = {"model": "policy-name", "prompt": "Once upon a time"}


def call(
    kind: Kind, body: dict[str, Any] | None = None, *, timeout_s: float = 5.0, retries: int = 0
) -> UpstreamCall:
    body = body if body is not None else (CHAT_BODY if kind == "chat" else TEXT_BODY)
    return UpstreamCall(kind, body, timeout_s, retries)


async def drain(stream: LitellmStream) -> list[dict[str, Any]]:
    return [chunk async for chunk in stream]


# -- non-streaming --------------------------------------------------------------------------


async def test_chat_completion_body_usage_and_passthrough(upstream: Upstream) -> None:
    body = {
        **CHAT_BODY,
        "max_tokens": 8,  # room for the COMPLETION_TOKENS the fake reports: more is clamped
        "temperature": 0.2,
        "stop": ["\n"],
        "n": 1,
        "logprobs": True,
        "top_logprobs": 1,
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
        "tool_choice": "auto",
        "top_k": 3,  # not OpenAI's: reaches the upstream as is
        # litellm keyword names: must reach the upstream as plain fields, never steer litellm
        "api_base": "http://127.0.0.1:9/v1",
        "mock_response": "pwned",
        "stream_options": {"include_usage": True},
    }
    original = json.loads(json.dumps(body))
    done = await backend("echo", upstream.base).complete(call("chat", body))

    assert body == original  # the client's body is not mutated
    assert done.body["model"] == "policy-name"
    assert done.body["object"] == "chat.completion"
    assert done.body["choices"][0]["message"] == {"role": "assistant", "content": "Hello world"}
    assert done.body["choices"][0]["logprobs"]["content"][0]["token"] == "Hello"
    assert done.body["usage"]["total_tokens"] == PROMPT_TOKENS + COMPLETION_TOKENS
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (11, 7)
    assert done.usage.exact
    assert done.endpoint == upstream.base
    assert done.provider_cost_usd is None  # "openai/echo" is not in litellm's price map
    orjson.dumps(done.body)  # plain JSON
    assert not any(k.startswith("_") for k in done.body)

    [req] = upstream.requests
    sent = req["body"]
    assert sent["model"] == "echo"
    for k in ("max_tokens", "temperature", "stop", "n", "logprobs", "top_logprobs", "tools"):
        assert sent[k] == body[k], k
    assert sent["tool_choice"] == "auto"
    assert sent["top_k"] == 3
    assert sent["api_base"] == "http://127.0.0.1:9/v1"
    assert sent["mock_response"] == "pwned"
    assert "stream" not in sent and "stream_options" not in sent
    assert req["headers"]["authorization"] == "Bearer sk-test-123"


async def test_text_completion_keeps_logprobs(upstream: Upstream) -> None:
    body = {**TEXT_BODY, "max_tokens": 8, "logprobs": 2, "echo": False, "seed": 4}
    done = await backend("echo", upstream.base).complete(call("completions", body))

    assert done.body["object"] == "text_completion"
    assert done.body["model"] == "policy-name"
    assert done.body["choices"][0]["text"] == "Hello world"
    assert done.body["choices"][0]["logprobs"]["tokens"] == ["Hello", " world"]
    assert done.usage.exact and done.usage.prompt_tokens == PROMPT_TOKENS
    orjson.dumps(done.body)
    [req] = upstream.requests
    assert req["kind"] == "completions"
    assert {k: req["body"][k] for k in ("model", "prompt", "max_tokens", "logprobs", "seed")} == {
        "model": "echo",
        "prompt": "Once upon a time",
        "max_tokens": 8,
        "logprobs": 2,
        "seed": 4,
    }


async def test_provider_cost_from_litellm_price_map(upstream: Upstream) -> None:
    done = await backend("gpt-4o-mini", upstream.base).complete(call("chat"))
    expected = litellm_cost_usd("openai/gpt-4o-mini", PROMPT_TOKENS, COMPLETION_TOKENS)
    assert expected is not None and expected > 0
    assert done.provider_cost_usd == pytest.approx(expected)
    assert litellm_cost_usd("openai/no-such-model-xyz", 10, 10) is None


async def test_cached_prompt_tokens_are_read_and_priced_by_litellm(upstream: Upstream) -> None:
    done = await backend(CACHED_MODEL, upstream.base).complete(call("chat"))
    assert done.usage.cached_tokens == CACHED_TOKENS
    assert done.body["usage"]["prompt_tokens_details"]["cached_tokens"] == CACHED_TOKENS
    full = litellm_cost_usd(f"openai/{CACHED_MODEL}", PROMPT_TOKENS, COMPLETION_TOKENS)
    cached = litellm_cost_usd(
        f"openai/{CACHED_MODEL}", PROMPT_TOKENS, COMPLETION_TOKENS, CACHED_TOKENS
    )
    assert full is not None and cached is not None and cached < full
    assert done.provider_cost_usd == pytest.approx(cached)

    body = {**CHAT_BODY, "stream": True, "max_tokens": 8}
    stream = await backend(CACHED_MODEL, upstream.base).open_stream(call("chat", body))
    final = (await drain(stream))[-1]
    assert final["usage"]["prompt_tokens_details"]["cached_tokens"] == CACHED_TOKENS
    assert stream.usage.cached_tokens == CACHED_TOKENS and stream.usage.exact
    assert stream.provider_cost_usd == pytest.approx(cached)


# -- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["chat", "completions"])
async def test_500_is_502_retryable_and_retried(upstream: Upstream, kind: Kind) -> None:
    with pytest.raises(UpstreamError) as info:
        await backend("fail500", upstream.base).complete(call(kind, retries=1))
    err = info.value
    assert (err.status, err.retryable, err.code) == (502, True, "upstream_error")
    assert "upstream exploded" in err.message
    assert err.attempts == [upstream.base, upstream.base]
    assert len(upstream.requests) == 2  # one retry, and no hidden SDK retries


async def test_retry_recovers_from_one_500(upstream: Upstream) -> None:
    done = await backend("flaky", upstream.base).complete(call("chat", retries=1))
    assert done.body["choices"][0]["message"]["content"] == "Hello world"
    assert len(upstream.requests) == 2


@pytest.mark.parametrize("kind", ["chat", "completions"])
async def test_400_keeps_status_and_is_not_retried(upstream: Upstream, kind: Kind) -> None:
    with pytest.raises(UpstreamError) as info:
        await backend("bad400", upstream.base).complete(call(kind, retries=2))
    err = info.value
    assert (err.status, err.retryable) == (400, False)
    assert "temperature is out of range" in err.message
    assert err.attempts == [upstream.base]
    assert len(upstream.requests) == 1


async def test_429_is_retryable_for_fallback_but_not_retried_here(upstream: Upstream) -> None:
    with pytest.raises(UpstreamError) as info:
        await backend("limit429", upstream.base).complete(call("chat", retries=2))
    assert (info.value.status, info.value.retryable) == (429, True)
    assert len(upstream.requests) == 1


@pytest.mark.parametrize("kind", ["chat", "completions"])
async def test_timeout_is_504(upstream: Upstream, kind: Kind) -> None:
    t0 = time.monotonic()
    with pytest.raises(UpstreamError) as info:
        await backend("slow", upstream.base).complete(call(kind, timeout_s=0.5))
    assert (info.value.status, info.value.retryable, info.value.code) == (
        504,
        True,
        "upstream_timeout",
    )
    assert time.monotonic() - t0 < 3


async def test_connection_refused_is_503_and_turns_unhealthy(upstream: Upstream) -> None:
    dead = f"http://127.0.0.1:{_free_port()}/v1"
    b = backend("echo", dead)
    assert b.healthy()
    for _ in range(3):
        with pytest.raises(UpstreamError) as info:
            await b.complete(call("chat"))
        assert (info.value.status, info.value.retryable) == (503, True)
        assert info.value.code == "upstream_unavailable"
        assert info.value.attempts == [dead]
        # The client is told which model, not the host, port or the transport's exception.
        assert info.value.message == "model 'policy-name': could not connect to its endpoint(s)"
        assert info.value.detail is not None and dead in info.value.detail
    assert not b.healthy()
    assert info.value.retry_after_s == 30.0  # out of use for that long: when to come back
    # A success resets it.
    b.api_base = b.endpoint = upstream.base
    await b.complete(call("chat"))
    assert b.healthy()


async def test_missing_key_variable_is_503_naming_it(
    upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ROUTEGATE_TEST_ABSENT_KEY", raising=False)
    b = backend("echo", upstream.base, key_var="ROUTEGATE_TEST_ABSENT_KEY")
    assert not b.healthy()
    for kind in ("chat", "completions"):
        with pytest.raises(UpstreamError) as info:
            await b.complete(call(kind))
        assert info.value.status == 503
        assert "ROUTEGATE_TEST_ABSENT_KEY" in info.value.message
        with pytest.raises(UpstreamError):
            await b.open_stream(call(kind))
    assert upstream.requests == []


async def test_no_key_configured_still_reaches_a_keyless_server(upstream: Upstream) -> None:
    done = await backend("echo", upstream.base, key_var=None).complete(call("chat"))
    assert done.usage.exact


# -- streaming ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["chat", "completions"])
async def test_stream_chunks_and_final_usage_chunk(upstream: Upstream, kind: Kind) -> None:
    body = {**(CHAT_BODY if kind == "chat" else TEXT_BODY), "stream": True, "max_tokens": 8}
    stream = await backend("echo", upstream.base).open_stream(call(kind, body))
    chunks = await drain(stream)

    obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
    assert all(c["object"] == obj and c["model"] == "policy-name" for c in chunks)
    *content, final = chunks
    if kind == "chat":
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in content)
        assert content[0]["choices"][0]["delta"]["role"] == "assistant"
    else:
        text = "".join(c["choices"][0]["text"] for c in content)
    assert text == "Hello world"
    assert content[-1]["choices"][0]["finish_reason"] == "stop"
    assert final["choices"] == []
    assert final["usage"]["prompt_tokens"] == PROMPT_TOKENS
    assert final["usage"]["completion_tokens"] == COMPLETION_TOKENS
    assert all("usage" not in c for c in content)
    assert stream.usage.exact and stream.usage.completion_tokens == COMPLETION_TOKENS
    orjson.dumps(chunks)

    [req] = upstream.requests
    assert req["body"]["stream"] is True
    assert req["body"]["stream_options"] == {"include_usage": True}  # asked even if not by client
    assert req["body"]["model"] == "echo"


@pytest.mark.parametrize("kind", ["chat", "completions"])
async def test_stream_first_chunk_is_read_before_returning(upstream: Upstream, kind: Kind) -> None:
    stream = await backend("gate", upstream.base).open_stream(call(kind, timeout_s=3))
    try:
        # The upstream holds everything after its first chunk until the gate opens.
        first = await asyncio.wait_for(stream.__anext__(), 0.2)
        assert first["choices"]
        assert not stream.usage.exact
    finally:
        upstream.gate.set()
    rest = await drain(stream)
    assert rest[-1]["choices"] == [] and stream.usage.exact


@pytest.mark.parametrize("kind", ["chat", "completions"])
async def test_stream_errors_before_first_chunk_raise_from_open(
    upstream: Upstream, kind: Kind
) -> None:
    b = backend("fail500", upstream.base)
    with pytest.raises(UpstreamError) as info:
        await b.open_stream(call(kind, retries=1))
    assert (info.value.status, info.value.retryable) == (502, True)
    assert len(upstream.requests) == 2

    with pytest.raises(UpstreamError) as info:
        await backend("bad400", upstream.base).open_stream(call(kind, retries=1))
    assert (info.value.status, info.value.retryable) == (400, False)

    with pytest.raises(UpstreamError) as info:
        await backend("slow", upstream.base).open_stream(call(kind, timeout_s=0.5))
    assert info.value.status == 504


@pytest.mark.parametrize("kind", ["chat", "completions"])
async def test_aclose_cancels_the_upstream_request(upstream: Upstream, kind: Kind) -> None:
    stream = await backend("drip", upstream.base).open_stream(call(kind))
    seen = [await stream.__anext__() for _ in range(3)]
    assert len(seen) == 3
    # Before the usage chunk: an estimate, counted from the chunks so far.
    usage = stream.usage
    assert not usage.exact
    assert usage.completion_tokens == 3
    assert 0 < usage.prompt_tokens != PROMPT_TOKENS

    await stream.aclose()
    assert await asyncio.to_thread(upstream.disconnected.wait, 3), "upstream saw no disconnect"
    assert [c async for c in stream] == []


@pytest.mark.parametrize("kind", ["chat", "completions"])
async def test_stream_without_upstream_usage_still_ends_with_a_usage_chunk(
    upstream: Upstream, kind: Kind
) -> None:
    # litellm counts the tokens itself then (so the usage reads as exact); were it not to,
    # the backend would send its own estimate.
    stream = await backend("nousage", upstream.base).open_stream(call(kind))
    chunks = await drain(stream)
    final = chunks[-1]
    assert final["choices"] == [] and final["model"] == "policy-name"
    assert final["usage"]["completion_tokens"] == stream.usage.completion_tokens == 2
    assert final["usage"]["prompt_tokens"] == stream.usage.prompt_tokens > 0
    assert sum(1 for c in chunks if not c["choices"]) == 1


TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.mark.parametrize(
    ("kind", "stream"), [("chat", False), ("completions", False), ("chat", True)]
)
async def test_a_calls_headers_reach_the_provider(
    upstream: Upstream, kind: Kind, stream: bool
) -> None:
    # The trace context of a traced call (gateway/backends/traced.py), as litellm's extra headers.
    body = {**(CHAT_BODY if kind == "chat" else TEXT_BODY), "stream": stream}
    traced = UpstreamCall(kind, body, 5.0, 0, headers={"traceparent": TRACEPARENT})
    b = backend("echo", upstream.base)
    if stream:
        s = await b.open_stream(traced)
        await drain(s)
    else:
        await b.complete(traced)
    [req] = upstream.requests
    assert req["headers"]["traceparent"] == TRACEPARENT
