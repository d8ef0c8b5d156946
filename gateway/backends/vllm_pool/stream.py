"""One streaming response from one vLLM endpoint, and the HTTP rules it shares with the pool."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx
import orjson

from gateway.backends.base import Kind, UpstreamCall, UpstreamError, Usage, http_error
from gateway.backends.openai_shapes import usage_object
from gateway.backends.usage_bounds import read_usage
from gateway.backends.vllm_pool.endpoints import Endpoint, EndpointHealth
from gateway.tokens import SPECIAL_TOKENS, CallBound

PATHS = {"chat": "/chat/completions", "completions": "/completions", "embeddings": "/embeddings"}


def upstream_timeouts(call: UpstreamCall) -> httpx.Timeout:
    # Reads are bounded by EndpointHealth.watched (and a stream's gaps by the pipeline), not
    # by httpx.
    return httpx.Timeout(None, connect=call.connect_timeout_s)


def transport_error(exc: httpx.HTTPError, model: str) -> UpstreamError:
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
        return UpstreamError(504, f"{model} timed out", "upstream_timeout", detail=repr(exc))
    # The cause names hosts, ports and socket errors: the log's, not the client's.
    return UpstreamError(
        503, unreachable(model), "upstream_unavailable", detail=f"unreachable: {cause or exc!r}"
    )


def unreachable(model: str) -> str:
    """What a client is told when no endpoint of `model` took the connection."""
    return f"model '{model}': could not connect to its endpoint(s)"


def error_from_response(status: int, payload: bytes, endpoint: str) -> UpstreamError:
    message, code, param = f"upstream answered {status}", None, None
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        err = orjson.loads(payload)
        err = err.get("error", err)
        message = str(err.get("message") or message)
        code = str(err.get("code") or err.get("type") or "") or None
        param = err.get("param")
    return http_error(status, message, code, param, endpoint)


class VllmStream:
    """One streaming response from one endpoint, the first chunk already read."""

    def __init__(
        self,
        name: str,
        client: httpx.AsyncClient,
        health: EndpointHealth,
        endpoint: Endpoint,
        kind: Kind,
        bound: CallBound,
    ):
        self._name = name
        self._client = client
        self._health = health
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

    async def open(self, payload: bytes, call: UpstreamCall) -> None:
        self._ep.outstanding += 1
        try:
            await self._health.watched(self._ep, call, self._start(payload, call))
        except httpx.HTTPError as exc:
            await self.aclose()
            raise transport_error(exc, self._name) from None
        except BaseException:
            await self.aclose()
            raise

    async def _start(self, payload: bytes, call: UpstreamCall) -> None:
        """Send the request and read up to the first chunk."""
        req = self._client.build_request(
            "POST",
            self._ep.base_url + PATHS[self._kind],
            content=payload,
            headers={"content-type": "application/json", **(call.headers or {})},
            timeout=upstream_timeouts(call),
        )
        self._resp = await self._client.send(req, stream=True)
        if self._resp.status_code != 200:
            content = await self._resp.aread()
            raise error_from_response(self._resp.status_code, content, self.endpoint)
        self._lines = self._resp.aiter_lines()
        self._first = await self._next_chunk()
        if self._first is None:
            raise UpstreamError(502, f"{self._name} closed the stream before any data")

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
            chunk["model"] = self._name
            for choice in chunk.get("choices") or []:
                if isinstance(choice, dict):
                    delta = choice.get("delta")
                    text = (delta.get("content") if isinstance(delta, dict) else None) or (
                        choice.get("text")
                    )
                    calls = delta.get("tool_calls") if isinstance(delta, dict) else None
                    self._text_bytes += len(str(text or "").encode()) + len(
                        str(calls or "").encode()
                    )
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
            elif not self.usage.exact and chunk.get("choices"):
                # No usage reported (yet): about a token a chunk, an estimate flagged inexact,
                # so a stream cut short is still charged for what it sent.
                self.usage.completion_tokens += 1
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
            raise UpstreamError(
                502, f"model '{self._name}': its stream broke off", detail=repr(exc)
            ) from None
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
