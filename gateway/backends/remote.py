"""A remote model through litellm: OpenAI, Anthropic, any OpenAI-compatible server.

litellm is imported lazily (it takes seconds): `start()` warms it in a thread at policy load,
and the first call imports it if `start()` was skipped. Importing this module stays cheap.

What the backend does on top of litellm:
- The client's OpenAI parameters go to litellm as OpenAI parameters; every other key travels in
  `extra_body`, so it reaches the upstream untouched but litellm never reads it. Client keys
  must not reach litellm's own kwargs: `api_base`, `api_key`, `mock_response`, `metadata` or a
  logging callback's settings would redirect the call (and our API key) or change its handling.
- Retries are ours (litellm's and the OpenAI SDK's are off): only connection errors, timeouts and
  5xx are retried, against the same model, before any byte was streamed.
- Responses are litellm's objects dumped to plain JSON, trimmed of litellm-only empty fields.
- Streams are re-shaped to what OpenAI sends with `include_usage`: the usage arrives as a final
  chunk with `choices: []` (litellm hangs it on a chunk with an empty choice).

Known litellm limits (1.106): text-completion streams lose `logprobs` and, with n > 1, the choice
indices (everything arrives as index 0); chat streams with n > 1 lose the finish chunks of all but
the first choice. Non-streaming calls keep both. Use a `vllm` model for full fidelity there.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import httpx
import orjson

from gateway.backends.base import (
    Completion,
    Kind,
    UpstreamCall,
    UpstreamError,
    Usage,
    http_error,
)
from gateway.backends.usage_bounds import (
    estimated_usage,
    malformed_choices,
    read_usage,
    usage_object,
)
from gateway.provider_prices import litellm_cost_usd, load_litellm
from gateway.tokens import CallBound, call_bound
from policies.schema import LitellmModel

log = logging.getLogger("routegate.remote")

T = TypeVar("T")

# OpenAI request parameters handed to litellm as such (litellm maps them per provider).
_CHAT_PARAMS = frozenset(
    {
        "messages", "frequency_penalty", "logit_bias", "logprobs", "top_logprobs", "max_tokens",
        "max_completion_tokens", "n", "presence_penalty", "response_format", "seed", "stop",
        "temperature", "top_p", "tools", "tool_choice", "parallel_tool_calls", "user",
        "functions", "function_call", "modalities", "audio", "prediction", "reasoning_effort",
        "verbosity", "service_tier", "store", "safety_identifier", "prompt_cache_key",
        "web_search_options", "thinking",
    }
)  # fmt: skip
_COMPLETION_PARAMS = frozenset(
    {
        "prompt", "best_of", "echo", "frequency_penalty", "logit_bias", "logprobs", "max_tokens",
        "n", "presence_penalty", "seed", "stop", "suffix", "temperature", "top_p", "user",
    }
)  # fmt: skip
# Set by the backend itself, never taken from the client.
_OWN_KEYS = frozenset({"model", "stream", "stream_options"})

# Providers that speak the OpenAI API (litellm calls them through the OpenAI SDK).
_OPENAI_LIKE = frozenset({"openai", "text-completion-openai"})

# healthy() turns False after this many connection failures in a row, for this long after the
# last one; then the model gets traffic again (there is no cheap health probe for a remote API).
UNHEALTHY_AFTER_FAILURES = 3
UNHEALTHY_FOR_S = 30.0
_RETRY_BACKOFF_S = 0.25  # doubled per retry, capped at 2 s
_CLOSE_TIMEOUT_S = 2.0

# -- OpenAI SDK clients for text completions --------------------------------------------------

# litellm builds a fresh HTTP client for every text completion to an OpenAI-like server (no
# connection reuse, and an "Unclosed connector" warning each time); we hand it a pooled one.
# Process-wide and never closed, like the gateway's shared client: requests of an old policy
# may still use it after a reload.
_clients: dict[tuple[int, str, str | None, float, float], Any] = {}


def _timeouts(call: UpstreamCall) -> httpx.Timeout:
    """The timeouts litellm passes on: the connect timeout apart (OpenAI-like providers, Azure
    and Bedrock take an httpx.Timeout; litellm gives the others the total alone)."""
    return httpx.Timeout(call.timeout_s, connect=call.connect_timeout_s)


def _openai_client(api_base: str, api_key: str | None, timeout: httpx.Timeout) -> Any:
    loop_id = id(asyncio.get_running_loop())  # an httpx client is bound to its event loop
    key = (loop_id, api_base, api_key, timeout.read or 0.0, timeout.connect or 0.0)
    client = _clients.get(key)
    if client is None:
        base = _clients.get((loop_id, api_base, api_key, 0.0, 0.0))
        if base is None:
            import openai

            base = openai.AsyncOpenAI(api_key=api_key, base_url=api_base, max_retries=0)
            _clients[(loop_id, api_base, api_key, 0.0, 0.0)] = base
        client = base.with_options(timeout=timeout)  # shares base's connection pool
        _clients[key] = client
    return client


# -- errors -----------------------------------------------------------------------------------


def _causes(exc: BaseException) -> list[BaseException]:
    """The exception and what it wraps (litellm wraps the OpenAI SDK, which wraps httpx)."""
    out: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and len(out) < 12 and all(cur is not seen for seen in out):
        out.append(cur)
        original = getattr(cur, "original_exception", None)
        cur = cur.__cause__ or (
            original if isinstance(original, BaseException) else cur.__context__
        )
    return out


def _is_timeout(e: BaseException) -> bool:
    import openai

    return isinstance(e, TimeoutError | httpx.TimeoutException | openai.APITimeoutError)


def _is_connect_error(e: BaseException) -> bool:
    import openai

    if isinstance(e, httpx.TransportError | ConnectionError):
        return True
    # litellm's own APIConnectionError subclasses the SDK's but also wraps unrelated failures.
    return isinstance(e, openai.APIConnectionError) and not type(e).__module__.startswith("litellm")


def _error_body(chain: list[BaseException]) -> dict[str, Any]:
    """The upstream's `{"message", "code", "param"}`, if an exception in the chain carries it."""
    for e in chain:
        body = getattr(e, "body", None)
        if isinstance(body, dict):
            inner = body.get("error", body)
            if isinstance(inner, dict):
                return inner
    return {}


def _to_upstream_error(exc: Exception, name: str, endpoint: str) -> UpstreamError:
    if isinstance(exc, UpstreamError):
        return exc
    chain = _causes(exc)
    if any(_is_timeout(e) for e in chain):
        return UpstreamError(504, f"{name} timed out ({endpoint})", "upstream_timeout")
    if any(_is_connect_error(e) for e in chain):
        detail = next((str(e) for e in reversed(chain) if str(e)), type(exc).__name__)
        return UpstreamError(
            503, f"{name} unreachable ({endpoint}): {detail}", "upstream_unavailable"
        )
    status = getattr(exc, "status_code", None)
    body = _error_body(chain)
    message = str(body.get("message") or getattr(exc, "message", None) or exc)
    param = body.get("param") if isinstance(body.get("param"), str) else None
    if status == 408:  # a timeout reported without a timeout exception underneath
        return UpstreamError(504, f"{name} timed out ({endpoint})", "upstream_timeout")
    if not isinstance(status, int) or not 400 <= status < 500:
        if not isinstance(status, int) or status < 400:  # not an HTTP answer: log the why
            log.warning("%s: unexpected litellm failure", name, exc_info=exc)
        return UpstreamError(502, f"{name} failed ({endpoint}): {message}", "upstream_error")
    code = body.get("code") or body.get("type")
    return http_error(status, message, str(code) if code else None, param, endpoint)


# -- response shaping -------------------------------------------------------------------------


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


def _dump(obj: Any) -> dict[str, Any]:
    data = obj if isinstance(obj, dict) else obj.model_dump(mode="json", warnings=False)
    # Private fields (`_hidden_params`...) and litellm-only extras left empty.
    return {
        k: v
        for k, v in data.items()
        if not k.startswith("_")
        and v is not None
        and not (k == "provider_specific_fields" and not v)
    }


def _shape_body(kind: Kind, data: dict[str, Any]) -> dict[str, Any]:
    for choice in data.get("choices") or []:
        if kind == "chat":
            msg = choice.get("message")
            if isinstance(msg, dict):
                extra = msg.pop("provider_specific_fields", None) or {}
                if extra.get("refusal") is not None:
                    msg["refusal"] = extra["refusal"]
                # OpenAI always sends `content` (null with tool calls); other nulls are noise.
                choice["message"] = {
                    k: v for k, v in msg.items() if v is not None or k == "content"
                }
        if not choice.get("provider_specific_fields"):
            choice.pop("provider_specific_fields", None)
        choice.setdefault("logprobs", None)
    if data.get("usage") is not None:
        data["usage"] = _drop_none(data["usage"])
    return data


def _usage_of(usage: Any, bound: CallBound) -> Usage | None:
    """The reported usage clamped to the call's bound; None when there is none (litellm fills
    zeros in for a provider that sent no usage)."""
    if not isinstance(usage, dict):
        return None
    if not usage.get("prompt_tokens") and not usage.get("completion_tokens"):
        return None
    return read_usage(usage, bound)


def _answered_unreadable(exc: BaseException) -> bool:
    """litellm refused a 200 answer's shape (no choices, usage that is no number): the call
    was made and may be billed, unlike a failed one."""
    from pydantic import ValidationError

    return any(
        isinstance(e, ValidationError) or "provider returned" in str(e) for e in _causes(exc)
    )


# -- the backend ------------------------------------------------------------------------------


class LitellmBackend:
    """One policy model served by a remote API through litellm."""

    def __init__(self, name: str, config: LitellmModel):
        self.name = name
        self.config = config
        self.api_base = str(config.api_base).rstrip("/") if config.api_base else None
        self.endpoint = self.api_base or config.model
        self._provider: str | None = None
        self._provider_known = False
        self._connect_failures = 0
        self._last_connect_failure = 0.0

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        await asyncio.to_thread(load_litellm)  # pay the import now, not on the first request

    async def aclose(self) -> None:
        return None  # no background work; the pooled clients outlive a policy (see _clients)

    def healthy(self) -> bool:
        """False while the API key variable is unset, or after UNHEALTHY_AFTER_FAILURES
        connection failures in a row, until UNHEALTHY_FOR_S after the last one."""
        if self.config.api_key_env and not os.environ.get(self.config.api_key_env):
            return False
        return not (
            self._connect_failures >= UNHEALTHY_AFTER_FAILURES
            and time.monotonic() - self._last_connect_failure < UNHEALTHY_FOR_S
        )

    def _note(self, err: UpstreamError | None) -> None:
        if err is None:
            self._connect_failures = 0
        elif err.code == "upstream_unavailable":
            self._connect_failures += 1
            self._last_connect_failure = time.monotonic()

    # -- request building -------------------------------------------------------------------
    def _provider_name(self) -> str | None:
        if not self._provider_known:
            try:
                self._provider = load_litellm().get_llm_provider(
                    model=self.config.model, api_base=self.api_base
                )[1]
            except Exception:  # litellm raises for models it cannot place; it will say so later
                self._provider = None
            self._provider_known = True
        return self._provider

    def _api_key(self) -> str | None:
        var = self.config.api_key_env
        if var:
            key = os.environ.get(var)
            if not key:
                raise UpstreamError(
                    503,
                    f"{self.name}: the environment variable {var} (its API key) is not set",
                    "api_key_missing",
                    attempts=[self.endpoint],
                )
            return key
        if self.api_base and self._provider_name() in _OPENAI_LIKE:
            # A self-hosted OpenAI-compatible server often needs no key, but the OpenAI SDK
            # refuses to send a request without one.
            return os.environ.get("OPENAI_API_KEY") or "no-key"
        return None  # litellm reads the provider's usual variable (ANTHROPIC_API_KEY...)

    def _kwargs(self, call: UpstreamCall, stream: bool) -> dict[str, Any]:
        known = _CHAT_PARAMS if call.kind == "chat" else _COMPLETION_PARAMS
        kwargs: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for k, v in call.body.items():
            if k in known:
                kwargs[k] = v
            elif k not in _OWN_KEYS:
                extra[k] = v
        if extra:
            kwargs["extra_body"] = extra
        # A copy: litellm edits some providers' messages in place, and a fallback model gets
        # the same body next.
        kwargs = orjson.loads(orjson.dumps(kwargs))
        key = self._api_key()
        load_litellm()  # before any timeout starts, should start() not have run
        kwargs.update(model=self.config.model, timeout=_timeouts(call), max_retries=0)
        if key is not None:
            kwargs["api_key"] = key
        if self.api_base:
            kwargs["api_base"] = self.api_base
        if stream:
            options = call.body.get("stream_options")
            options = dict(options) if isinstance(options, dict) else {}
            options["include_usage"] = True  # usage must be known, whatever the client asked
            kwargs.update(stream=True, stream_options=options)
        if call.kind == "completions" and self.api_base and self._provider_name() in _OPENAI_LIKE:
            kwargs["client"] = _openai_client(self.api_base, key, _timeouts(call))
        return kwargs

    async def _send(self, kind: Kind, kwargs: dict[str, Any]) -> Any:
        litellm = load_litellm()  # already loaded by _kwargs: the import is not timed
        if kind == "chat":
            return await litellm.acompletion(**kwargs)
        return await litellm.atext_completion(**kwargs)

    def _retry_delay(self, err: UpstreamError, attempt: int, call: UpstreamCall) -> float | None:
        """Seconds to wait before the next try, or None to give up."""
        if not err.retryable or err.status == 429 or attempt >= call.retries:
            return None
        if err.usage is not None:  # answered, unusable: a re-ask is another paid call
            return None  # a rate limit is better answered by a fallback model than a re-ask
        return min(_RETRY_BACKOFF_S * 2**attempt, 2.0)

    def prompt_tokens_estimate(self, body: dict[str, Any], kind: Kind) -> int:
        litellm = load_litellm()
        try:
            if kind == "chat":
                return int(
                    litellm.token_counter(
                        model=self.config.model,
                        messages=body.get("messages") or [],
                        tools=body.get("tools"),
                    )
                )
            prompt = body.get("prompt") or ""
            items = prompt if isinstance(prompt, list) else [prompt]
            total = 0
            for item in items:
                if isinstance(item, int):
                    total += 1  # a prompt given as token ids
                elif isinstance(item, list):
                    total += len(item)
                else:
                    total += int(litellm.token_counter(model=self.config.model, text=str(item)))
            return total
        except Exception:  # an estimate is not worth failing a request for
            return 0

    # -- calls ------------------------------------------------------------------------------
    async def _retrying(
        self, call: UpstreamCall, once: Callable[[], Awaitable[T]]
    ) -> tuple[T, list[str]]:
        """Run `once` until it succeeds or the retry rule says stop; also the endpoints tried."""
        tried: list[str] = []
        for attempt in itertools.count():
            tried.append(self.endpoint)
            try:
                # litellm's timeout bounds each network wait; this bounds the whole attempt.
                async with asyncio.timeout(call.timeout_s):
                    result = await once()
            except Exception as exc:
                err = _to_upstream_error(exc, self.name, self.endpoint)
                err.attempts = tried
                if err.usage is None and _answered_unreadable(exc):
                    err.usage = read_usage(None, self._bound(call))
                    err.message = f"answered 200 but no usable answer: {err.message}"
                self._note(err)
                delay = self._retry_delay(err, attempt, call)
                if delay is None:
                    raise err from None
                log.info("%s: retrying after %s", self.name, err)
                await asyncio.sleep(delay)
                continue
            self._note(None)
            return result, tried
        raise AssertionError("unreachable")

    async def complete(self, call: UpstreamCall) -> Completion:
        kwargs = self._kwargs(call, stream=False)
        response, _ = await self._retrying(call, lambda: self._send(call.kind, kwargs))
        return self._completion(call, response)

    def _bound(self, call: UpstreamCall) -> CallBound:
        return call_bound(call.body, self.config.context_length)

    def _completion(self, call: UpstreamCall, response: Any) -> Completion:
        body = _shape_body(call.kind, _dump(response))
        bound = self._bound(call)
        problem = malformed_choices(call.kind, body)
        if problem is not None:
            raise UpstreamError(
                502,
                f"{self.name} answered 200 but {problem}",
                attempts=[self.endpoint],
                usage=_usage_of(body.get("usage"), bound) or read_usage(None, bound),
            )
        body["model"] = self.name
        usage = _usage_of(body.get("usage"), bound)
        if usage is None:  # the provider sent none: estimate, and say so
            text = " ".join(
                str((c.get("message") or {}).get("content") or c.get("text") or "")
                for c in body.get("choices") or []
            )
            completion = int(load_litellm().token_counter(model=self.config.model, text=text))
            prompt = self.prompt_tokens_estimate(call.body, call.kind)
            usage = estimated_usage(prompt, completion, bound)
        if usage.anomaly is not None:
            body["usage"] = usage_object(usage)  # the client sees what it is charged for
        cost = litellm_cost_usd(self.config.model, usage.prompt_tokens, usage.completion_tokens)
        return Completion(body=body, usage=usage, endpoint=self.endpoint, provider_cost_usd=cost)

    async def open_stream(self, call: UpstreamCall) -> LitellmStream:
        kwargs = self._kwargs(call, stream=True)

        async def once() -> LitellmStream:
            stream = LitellmStream(self, call)
            try:
                stream.raw = await self._send(call.kind, kwargs)
                # Read up to the first chunk here, so a failure before any byte is an error
                # the gateway can still fall back from.
                await stream.prime()
            except BaseException:
                await stream.aclose()
                raise
            return stream

        stream, tried = await self._retrying(call, once)
        stream.attempts = tried
        return stream


# -- streams ----------------------------------------------------------------------------------


async def _close_chain(obj: Any) -> None:
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

    def __init__(self, backend: LitellmBackend, call: UpstreamCall):
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
                raise _to_upstream_error(exc, self._backend.name, self.endpoint) from None
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
                    await _close_chain(raw)

    async def _pull(self) -> None:
        try:
            chunk = await self.raw.__anext__()
        except StopAsyncIteration:
            self._ended = True
            if self._saw_chunk and not self._saw_usage:
                # The provider reported no usage: send the estimate in OpenAI's place for it.
                u = self.usage
                self._usage = u = estimated_usage(
                    u.prompt_tokens, u.completion_tokens, self._backend._bound(self._call)
                )
                self._pending.append(self._usage_chunk(u.prompt_tokens, u.completion_tokens))
            return
        data = _dump(chunk)
        self._saw_chunk = True
        if self._call.kind == "chat":
            choices, produced = self._chat_choices(data.get("choices") or [])
        else:
            choices, produced = self._text_choices(data.get("choices") or [])
        self._template = {k: data[k] for k in ("id", "object", "created") if k in data}
        if not self._usage.exact:
            self._usage.completion_tokens += produced
        if choices:
            out = {**self._template, "model": self._backend.name, "choices": choices}
            if data.get("system_fingerprint"):
                out["system_fingerprint"] = data["system_fingerprint"]
            self._pending.append(out)
        usage = _usage_of(data.get("usage"), self._backend._bound(self._call))
        if usage is not None and not self._saw_usage:
            self._saw_usage = True
            self._usage.prompt_tokens = usage.prompt_tokens
            self._usage.completion_tokens = usage.completion_tokens
            self._usage.exact = True
            self._usage.anomaly = usage.anomaly
            self.provider_cost_usd = litellm_cost_usd(
                self._backend.config.model, usage.prompt_tokens, usage.completion_tokens
            )
            final = self._usage_chunk(usage.prompt_tokens, usage.completion_tokens)
            if usage.anomaly is None:
                final["usage"] = _drop_none(data["usage"])  # with the provider's token details
            self._pending.append(final)

    def _usage_chunk(self, prompt: int, completion: int) -> dict[str, Any]:
        default_object = "chat.completion.chunk" if self._call.kind == "chat" else "text_completion"
        return {
            "id": self._template.get("id", ""),
            "object": self._template.get("object", default_object),
            "created": self._template.get("created", int(time.time())),
            "model": self._backend.name,
            "choices": [],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            },
        }

    @staticmethod
    def _chat_choices(raw: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
        """Choices worth sending (litellm pads usage chunks with an empty one) and how many
        carried generated text (about a token each)."""
        out, produced = [], 0
        for c in raw:
            delta = _drop_none(c.get("delta") or {})
            delta.pop("provider_specific_fields", None)
            if not delta and c.get("finish_reason") is None and c.get("logprobs") is None:
                continue
            if delta.get("content") or delta.get("tool_calls") or delta.get("reasoning_content"):
                produced += 1
            out.append(
                {
                    "index": c.get("index", 0),
                    "delta": delta,
                    "logprobs": c.get("logprobs"),
                    "finish_reason": c.get("finish_reason"),
                }
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
                {
                    "index": c.get("index", 0),
                    "text": text,
                    "logprobs": c.get("logprobs"),
                    "finish_reason": c.get("finish_reason"),
                }
            )
        return out, produced
