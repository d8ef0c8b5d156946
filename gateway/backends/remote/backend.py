"""LitellmBackend: one policy model served by a remote API through litellm."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson

from gateway.backends.base import Completion, Kind, UpstreamCall, UpstreamError
from gateway.backends.openai_shapes import embedding_usage, embeddings_as, usage_object
from gateway.backends.remote.clients import openai_client, timeouts
from gateway.backends.remote.errors import answered_unreadable, to_upstream_error
from gateway.backends.remote.shaping import dump, shape_body, usage_of
from gateway.backends.remote.stream import LitellmStream
from gateway.backends.usage_bounds import (
    estimated_usage,
    malformed_choices,
    read_embedding_usage,
    read_usage,
)
from gateway.provider_prices import litellm_cost_usd, load_litellm
from gateway.tokens import CallBound, call_bound, embedding_bound
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
# Embeddings: litellm is always asked for floats (providers differ on base64); the gateway
# encodes them as the client asked.
_EMBEDDING_PARAMS = frozenset({"input", "dimensions", "user"})
_PARAMS: dict[Kind, frozenset[str]] = {
    "chat": _CHAT_PARAMS,
    "completions": _COMPLETION_PARAMS,
    "embeddings": _EMBEDDING_PARAMS,
}
# Set by the backend itself, never taken from the client.
_OWN_KEYS = frozenset({"model", "stream", "stream_options"})

# Providers that speak the OpenAI API (litellm calls them through the OpenAI SDK).
_OPENAI_LIKE = frozenset({"openai", "text-completion-openai"})

# healthy() turns False after this many connection failures in a row, for this long after the
# last one; then the model gets traffic again (there is no cheap health probe for a remote API).
UNHEALTHY_AFTER_FAILURES = 3
UNHEALTHY_FOR_S = 30.0
_RETRY_BACKOFF_S = 0.25  # doubled per retry, capped at 2 s


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
        return None  # no background work; the pooled clients outlive a policy (clients.py)

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
            if self._connect_failures >= UNHEALTHY_AFTER_FAILURES:
                err.retry_after_s = UNHEALTHY_FOR_S  # traffic comes back to it after that

    @property
    def provider(self) -> str:
        """The provider litellm calls ("openai", "anthropic"...): the GenAI provider in traces."""
        return self._provider_name() or "litellm"

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
        known = _PARAMS[call.kind]
        kwargs: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for k, v in call.body.items():
            if k in known:
                kwargs[k] = v
            elif k not in _OWN_KEYS and not (call.kind == "embeddings" and k == "encoding_format"):
                extra[k] = v
        if extra:
            kwargs["extra_body"] = extra
        # A copy: litellm edits some providers' messages in place, and a fallback model gets
        # the same body next.
        kwargs = orjson.loads(orjson.dumps(kwargs))
        key = self._api_key()
        load_litellm()  # before any timeout starts, should start() not have run
        kwargs.update(model=self.config.model, timeout=timeouts(call), max_retries=0)
        if key is not None:
            kwargs["api_key"] = key
        if self.api_base:
            kwargs["api_base"] = self.api_base
        if stream:
            options = call.body.get("stream_options")
            options = dict(options) if isinstance(options, dict) else {}
            options["include_usage"] = True  # usage must be known, whatever the client asked
            kwargs.update(stream=True, stream_options=options)
        if call.headers:  # the trace context, for the provider's (or proxy's) own traces
            kwargs["extra_headers"] = call.headers
        if call.kind == "completions" and self.api_base and self._provider_name() in _OPENAI_LIKE:
            kwargs["client"] = openai_client(self.api_base, key, timeouts(call))
        return kwargs

    async def _send(self, kind: Kind, kwargs: dict[str, Any]) -> Any:
        litellm = load_litellm()  # already loaded by _kwargs: the import is not timed
        if kind == "chat":
            return await litellm.acompletion(**kwargs)
        if kind == "embeddings":
            return await litellm.aembedding(**kwargs)
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
            prompt = body.get("prompt") or body.get("input") or ""
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
                err = to_upstream_error(exc, self.name, self.endpoint)
                err.attempts = tried
                if err.usage is None and answered_unreadable(exc):
                    err.usage = read_usage(None, self.bound_of(call))
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

    def bound_of(self, call: UpstreamCall) -> CallBound:
        if call.kind == "embeddings":
            return embedding_bound(call.body, self.config.context_length)
        return call_bound(call.body, self.config.context_length)

    def _embeddings(self, call: UpstreamCall, response: Any) -> Completion:
        body = dump(response)
        bound = self.bound_of(call)
        problem = malformed_choices(call.kind, body)
        raw = body.get("usage")
        usage = read_embedding_usage(raw, bound)
        if problem is not None:
            message = f"{self.name} answered 200 but {problem}"
            raise UpstreamError(502, message, attempts=[self.endpoint], usage=usage)
        body["model"] = self.name
        if not isinstance(raw, dict) or not raw.get("prompt_tokens"):
            # litellm fills in zeros for a provider that sent no usage: estimate, and say so.
            estimate = self.prompt_tokens_estimate(call.body, call.kind)
            usage = estimated_usage(estimate, 0, bound)
        # OpenAI's shape (litellm adds completion_tokens), with what is charged.
        body["usage"] = embedding_usage(usage.prompt_tokens)
        embeddings_as(body, call.body.get("encoding_format"))
        cost = litellm_cost_usd(self.config.model, usage.prompt_tokens, 0)
        return Completion(body=body, usage=usage, endpoint=self.endpoint, provider_cost_usd=cost)

    def _completion(self, call: UpstreamCall, response: Any) -> Completion:
        if call.kind == "embeddings":
            return self._embeddings(call, response)
        body = shape_body(call.kind, dump(response))
        bound = self.bound_of(call)
        problem = malformed_choices(call.kind, body)
        if problem is not None:
            raise UpstreamError(
                502,
                f"{self.name} answered 200 but {problem}",
                attempts=[self.endpoint],
                usage=usage_of(body.get("usage"), bound) or read_usage(None, bound),
            )
        body["model"] = self.name
        usage = usage_of(body.get("usage"), bound)
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
        cost = litellm_cost_usd(
            self.config.model, usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens
        )
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
