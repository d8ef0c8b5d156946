"""A pool of vLLM OpenAI servers serving one model.

Choice by fewest outstanding requests among healthy endpoints; a connect error, timeout or 5xx
before any byte was streamed marks the endpoint down (cooled down, re-probed by the health
loop) and the call moves to the next endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx
import orjson

from gateway.accounting.usage_bounds import (
    SPECIAL_TOKENS,
    CallBound,
    answer_bytes,
    call_bound,
    malformed_choices,
    read_usage,
    usage_object,
)
from gateway.backends.base import Completion, UpstreamCall, UpstreamError, Usage, http_error
from policies.schema import VllmModel

log = logging.getLogger("routegate.vllm")

_PATHS = {"chat": "/chat/completions", "completions": "/completions"}
_NO_TEMPLATE = {400, 404, 422}  # /tokenize refused the messages: the model has no chat template


class Endpoint:
    __slots__ = ("base_url", "down_until", "failures", "health_url", "healthy", "outstanding")

    def __init__(self, base_url: str):
        self.base_url = base_url.rstrip("/")
        # vLLM serves /health at the server root, beside /v1.
        root = self.base_url.removesuffix("/v1")
        self.health_url = f"{root}/health"
        self.outstanding = 0
        self.healthy = True  # optimistic until the first probe says otherwise
        self.down_until = 0.0
        self.failures = 0

    def usable(self, now: float) -> bool:
        return self.healthy and now >= self.down_until


def _transport_error(exc: httpx.HTTPError, model: str) -> UpstreamError:
    """A failed exchange: timeout (504) or unreachable (503).

    The aiohttp transport reports any broken connection as ConnectTimeout, so whether it was
    really a timeout is read from the cause.
    """
    cause = exc.__cause__
    broken = isinstance(cause, aiohttp.ClientConnectionError) and not isinstance(
        cause, aiohttp.ServerTimeoutError
    )
    timed_out = isinstance(exc, httpx.TimeoutException) and not broken
    if timed_out:
        return UpstreamError(504, f"{model} timed out", "upstream_timeout")
    return UpstreamError(503, f"{model} unreachable: {cause or exc!r}", "upstream_unavailable")


def _error_from_response(status: int, payload: bytes, endpoint: str) -> UpstreamError:
    message, code, param = f"upstream answered {status}", None, None
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        err = orjson.loads(payload)
        err = err.get("error", err)
        message = str(err.get("message") or message)
        code = str(err.get("code") or err.get("type") or "") or None
        param = err.get("param")
    return http_error(status, message, code, param, endpoint)


class VllmPool:
    def __init__(
        self,
        name: str,
        config: VllmModel,
        client: httpx.AsyncClient,
        *,
        health_interval_s: float = 5.0,
        cooldown_s: float = 10.0,
    ):
        self.name = name
        self.served_name = config.served_name or name
        self.endpoints = [Endpoint(str(url)) for url in config.endpoints]
        self.context_length = config.context_length
        self._client = client
        self._health_interval_s = health_interval_s
        self._cooldown_s = cooldown_s
        self._health_task: asyncio.Task[None] | None = None

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        await self.probe_all()
        self._health_task = asyncio.create_task(self._health_loop(), name=f"health:{self.name}")

    async def aclose(self) -> None:
        if self._health_task:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task

    def healthy(self) -> bool:
        now = time.monotonic()
        return any(e.usable(now) for e in self.endpoints)

    async def probe_all(self) -> None:
        await asyncio.gather(*(self._probe(e) for e in self.endpoints))

    async def _probe(self, endpoint: Endpoint) -> None:
        try:
            resp = await self._client.get(endpoint.health_url, timeout=2.0)
            ok = resp.status_code == 200
        except httpx.HTTPError:
            ok = False
        if ok and not endpoint.healthy:
            log.info("endpoint %s of %s is back", endpoint.base_url, self.name)
        if not ok and endpoint.healthy:
            log.warning("endpoint %s of %s failed its health check", endpoint.base_url, self.name)
        endpoint.healthy = ok
        if ok:
            endpoint.down_until = 0.0
            endpoint.failures = 0

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self._health_interval_s)
            await self.probe_all()

    # -- choice -----------------------------------------------------------------------------
    async def render_chat(
        self, messages: list[dict[str, Any]], timeout_s: float, retries: int
    ) -> str | None:
        """The chat rendered in the model's own chat template, as text; None when the server
        has no template. For callers that continue raw text through /completions (EAD).

        vLLM's /tokenize (at the server root) applies the template but answers token ids only,
        so /detokenize turns them back into text."""
        tried: list[str] = []
        last: UpstreamError | None = None
        for endpoint in self._order()[: retries + 1]:
            root = endpoint.base_url.removesuffix("/v1")
            tried.append(endpoint.base_url)
            try:
                tok = await self._client.post(
                    root + "/tokenize",
                    json={
                        "model": self.served_name,
                        "messages": messages,
                        "add_generation_prompt": True,
                    },
                    timeout=timeout_s,
                )
                if tok.status_code in _NO_TEMPLATE:
                    return None
                tok.raise_for_status()
                detok = await self._client.post(
                    root + "/detokenize",
                    json={"model": self.served_name, "tokens": orjson.loads(tok.content)["tokens"]},
                    timeout=timeout_s,
                )
                detok.raise_for_status()
                return str(orjson.loads(detok.content)["prompt"])
            except (httpx.HTTPError, orjson.JSONDecodeError, KeyError) as exc:
                status = exc.response.status_code if isinstance(exc, httpx.HTTPStatusError) else 0
                if isinstance(exc, httpx.TransportError) or status >= 500:
                    self._mark_failed(endpoint)  # as a failed completion call would
                last = UpstreamError(503, f"{self.name}: rendering the chat failed: {exc!r}")
        err = last or UpstreamError(503, f"{self.name} has no endpoints", "upstream_unavailable")
        err.attempts = tried
        raise err

    def _order(self) -> list[Endpoint]:
        """Usable endpoints by fewest outstanding (ties shuffled), then the cooling ones."""
        now = time.monotonic()
        eps = self.endpoints[:]
        random.shuffle(eps)
        usable = sorted((e for e in eps if e.usable(now)), key=lambda e: e.outstanding)
        # Cooling endpoints come last, earliest-recovering first: better than failing outright.
        cooling = sorted((e for e in eps if not e.usable(now)), key=lambda e: e.down_until)
        return usable + cooling

    def _mark_failed(self, endpoint: Endpoint) -> None:
        endpoint.failures += 1
        # Back off longer after repeated failures, capped at 8x the cooldown.
        endpoint.down_until = time.monotonic() + self._cooldown_s * min(
            2 ** (endpoint.failures - 1), 8
        )

    def _body(self, call: UpstreamCall, stream: bool) -> bytes:
        body = dict(call.body)
        body["model"] = self.served_name
        if stream:
            # Ask for usage on every chunk so a stream cut short is still counted exactly.
            body["stream_options"] = {"include_usage": True, "continuous_usage_stats": True}
        return orjson.dumps(body)

    async def _attempts(self, call: UpstreamCall) -> AsyncIterator[Endpoint]:
        order = self._order()
        for endpoint in order[: call.retries + 1]:
            yield endpoint

    # -- calls ------------------------------------------------------------------------------
    async def complete(self, call: UpstreamCall) -> Completion:
        payload = self._body(call, stream=False)
        tried: list[str] = []
        last: UpstreamError | None = None
        async for endpoint in self._attempts(call):
            tried.append(endpoint.base_url)
            endpoint.outstanding += 1
            try:
                resp = await self._client.post(
                    endpoint.base_url + _PATHS[call.kind],
                    content=payload,
                    headers={"content-type": "application/json"},
                    timeout=call.timeout_s,
                )
            except httpx.HTTPError as exc:
                self._mark_failed(endpoint)
                last = _transport_error(exc, self.name)
                continue
            finally:
                endpoint.outstanding -= 1
            if resp.status_code != 200:
                err = _error_from_response(resp.status_code, resp.content, endpoint.base_url)
                if not err.retryable:
                    err.attempts = tried
                    raise err
                if resp.status_code >= 500:
                    self._mark_failed(endpoint)
                last = err
                continue
            try:
                body = orjson.loads(resp.content)
            except orjson.JSONDecodeError:
                self._mark_failed(endpoint)
                last = UpstreamError(502, f"{self.name} answered with invalid JSON")
                continue
            return self._completion(call, body, endpoint)
        raise self._exhausted(last, tried)

    def _completion(self, call: UpstreamCall, body: Any, endpoint: Endpoint) -> Completion:
        """A 200's body, its usage clamped to what the call can produce; a 502 that is still
        charged when it is no OpenAI answer."""
        bound = call_bound(call.body, self.context_length)
        problem = malformed_choices(call.kind, body)
        raw = body.get("usage") if isinstance(body, dict) else None
        if problem is not None:
            self._mark_failed(endpoint)
            raise UpstreamError(
                502,
                f"{self.name} answered 200 but {problem}",
                attempts=[endpoint.base_url],
                usage=read_usage(raw, bound),
            )
        body["model"] = self.name
        usage = read_usage(raw, bound, answer_bytes(call.kind, body))
        if usage.anomaly is not None:
            body["usage"] = usage_object(usage)  # the client sees what it is charged for
        return Completion(body, usage, endpoint.base_url)

    def _exhausted(self, last: UpstreamError | None, tried: list[str]) -> UpstreamError:
        err = last or UpstreamError(503, f"{self.name} has no endpoints", "upstream_unavailable")
        err.attempts = tried
        return err

    async def open_stream(self, call: UpstreamCall) -> VllmStream:
        payload = self._body(call, stream=True)
        tried: list[str] = []
        last: UpstreamError | None = None
        async for endpoint in self._attempts(call):
            tried.append(endpoint.base_url)
            stream = VllmStream(
                self, endpoint, call.kind, call_bound(call.body, self.context_length)
            )
            try:
                await stream.open(payload, call.timeout_s)
            except UpstreamError as err:
                if not err.retryable:
                    err.attempts = tried
                    raise
                if err.status != 429:
                    self._mark_failed(endpoint)
                last = err
                continue
            stream.attempts = tried
            return stream
        raise self._exhausted(last, tried)


class VllmStream:
    """One streaming response from one endpoint, the first chunk already read."""

    def __init__(self, pool: VllmPool, endpoint: Endpoint, kind: str, bound: CallBound):
        self._pool = pool
        self._ep = endpoint
        self._kind = kind
        self._bound = bound
        self._anomaly: dict[str, Any] | None = None  # the first impossible report, kept
        self._text_bytes = 0  # of the answer so far: the estimate should no usage come
        self.endpoint = endpoint.base_url
        self.usage = Usage()
        self.provider_cost_usd: float | None = None
        self.attempts: list[str] = []
        self._resp: httpx.Response | None = None
        self._lines: AsyncIterator[str] | None = None
        self._first: dict[str, Any] | None = None
        self._closed = False

    async def open(self, payload: bytes, timeout_s: float) -> None:
        pool = self._pool
        self._ep.outstanding += 1
        try:
            req = pool._client.build_request(
                "POST",
                self._ep.base_url + _PATHS[self._kind],
                content=payload,
                headers={"content-type": "application/json"},
                timeout=timeout_s,
            )
            self._resp = await pool._client.send(req, stream=True)
            if self._resp.status_code != 200:
                content = await self._resp.aread()
                raise _error_from_response(self._resp.status_code, content, self.endpoint)
            self._lines = self._resp.aiter_lines()
            self._first = await self._next_chunk()
            if self._first is None:
                raise UpstreamError(502, f"{pool.name} closed the stream before any data")
        except httpx.HTTPError as exc:
            await self.aclose()
            raise _transport_error(exc, pool.name) from None
        except BaseException:
            await self.aclose()
            raise

    async def _next_chunk(self) -> dict[str, Any] | None:
        assert self._lines is not None
        async for line in self._lines:
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                # Read the response to its end so its connection goes back to the pool;
                # only a stream abandoned half-way closes the connection.
                async for _ in self._lines:
                    pass
                return None
            chunk = orjson.loads(data)
            if "error" in chunk and "choices" not in chunk:
                err = chunk["error"]
                raise UpstreamError(502, str(err.get("message", err)), "upstream_error")
            chunk["model"] = self._pool.name
            for choice in chunk.get("choices") or []:
                if isinstance(choice, dict):
                    delta = choice.get("delta")
                    text = (delta.get("content") if isinstance(delta, dict) else None) or (
                        choice.get("text")
                    )
                    self._text_bytes += len(str(text or "").encode())
            usage = chunk.get("usage")
            if usage:
                self.usage = read_usage(usage, self._bound)
                self._anomaly = self._anomaly or self.usage.anomaly
                self.usage.anomaly = self._anomaly
                if self._anomaly is not None:  # the client sees what it is charged for
                    chunk["usage"] = usage_object(self.usage)
                # Continuous usage is for our accounting; the client sees OpenAI's shape:
                # usage only on the final chunk, which has no choices.
                if chunk.get("choices"):
                    chunk["usage"] = None
            return chunk
        return None

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[dict[str, Any]]:
        try:
            if self._first is not None:
                first, self._first = self._first, None
                yield first
            while (chunk := await self._next_chunk()) is not None:
                yield chunk
        except httpx.HTTPError as exc:
            raise UpstreamError(502, f"{self._pool.name} stream broke: {exc!r}") from None
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._ep.outstanding -= 1
        if self.usage.anomaly is None and not self.usage.exact:
            # No usage came: charge an estimate, flagged, rather than nothing.
            self.usage = read_usage(None, self._bound, self._text_bytes + SPECIAL_TOKENS)
        if self._resp is not None:
            # Closing the connection mid-stream makes vLLM abort the generation.
            await self._resp.aclose()
