"""A pool of vLLM OpenAI servers serving one model.

Choice by fewest outstanding requests among usable endpoints; a connect error, timeout or 5xx
before any byte was streamed moves the call to the next endpoint.

An endpoint is out of use while it is unhealthy (`unhealthy_after` failed health probes in a
row; back after one success) or ejected (`eject_after` failed calls in a row, as Envoy's outlier
detection does; out for `cooldown_s`, doubling per ejection in a row up to 8x, or until a health
probe passes). A frozen server (SIGSTOP, a wedged event loop) still accepts TCP connections, so
neither a connect error nor a timeout shows it quickly: a call that gets no byte for
`first_byte_timeout_s` asks the endpoint's /health, and one that does not answer within
`health_timeout_s` is ejected at once and the call moves on. A live server that is merely
generating is waited on, up to `timeout_s`; running out of it there is the request's length,
not the server's fault, so it does not count towards ejection (else any client could eject
servers with long requests).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import httpx
import orjson

from gateway.backends.base import Completion, UpstreamCall, UpstreamError, Usage, http_error
from gateway.backends.usage_bounds import (
    answer_bytes,
    malformed_choices,
    read_usage,
    usage_object,
)
from gateway.tokens import SPECIAL_TOKENS, CallBound, call_bound
from policies.schema import VllmModel

log = logging.getLogger("routegate.vllm")

T = TypeVar("T")

_PATHS = {"chat": "/chat/completions", "completions": "/completions"}
_NO_TEMPLATE = {400, 404, 422}  # /tokenize refused the messages: the model has no chat template


class Endpoint:
    __slots__ = (
        "base_url",
        "check",
        "down_until",
        "ejections",
        "failures",
        "health_url",
        "healthy",
        "outstanding",
        "probe_failures",
    )

    def __init__(self, base_url: str):
        self.base_url = base_url.rstrip("/")
        # vLLM serves /health at the server root, beside /v1.
        root = self.base_url.removesuffix("/v1")
        self.health_url = f"{root}/health"
        self.outstanding = 0
        self.healthy = True  # optimistic until probes say otherwise
        self.probe_failures = 0  # failed health probes in a row
        self.down_until = 0.0  # ejected until then
        self.failures = 0  # failed calls in a row
        self.ejections = 0  # ejections in a row (no successful call between): the backoff
        self.check: asyncio.Task[bool] | None = None  # a liveness probe that calls share

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


@dataclass
class _Frozen(UpstreamError):
    """No byte, and no answer to /health either: the endpoint is ejected at once."""


@dataclass
class _Overran(UpstreamError):
    """Out of time on an endpoint that still answers /health: not the endpoint's fault."""


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
        health_timeout_s: float = 2.0,
        unhealthy_after: int = 2,
        eject_after: int = 3,
    ):
        self.name = name
        self.served_name = config.served_name or name
        self.endpoints = [Endpoint(str(url)) for url in config.endpoints]
        self.context_length = config.context_length
        self._client = client
        self._health_interval_s = health_interval_s
        self._cooldown_s = cooldown_s
        self._health_timeout_s = health_timeout_s
        self._unhealthy_after = unhealthy_after
        self._eject_after = eject_after
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

    async def _probe(self, endpoint: Endpoint) -> bool:
        try:
            # The wall-clock bound also stops a /health that drips its answer byte by byte.
            async with asyncio.timeout(self._health_timeout_s):
                resp = await self._client.get(endpoint.health_url, timeout=self._health_timeout_s)
            ok = resp.status_code == 200
        except Exception:  # whatever went wrong, the probe failed; the loop must not die of it
            ok = False
        if ok:
            if not endpoint.healthy:
                log.info("endpoint %s of %s is back", endpoint.base_url, self.name)
            endpoint.healthy, endpoint.probe_failures = True, 0
            # A passing probe also ends an ejection early, as Envoy does by default; the call
            # count stays, so one more failure ejects it again, for twice as long.
            endpoint.down_until = 0.0
            return True
        endpoint.probe_failures += 1
        if endpoint.healthy and endpoint.probe_failures >= self._unhealthy_after:
            log.warning(
                "endpoint %s of %s failed %d health checks in a row: out of use until one passes",
                endpoint.base_url, self.name, endpoint.probe_failures,
            )  # fmt: skip
            endpoint.healthy = False
        return False

    async def _alive(self, endpoint: Endpoint) -> bool:
        """A liveness probe for calls waiting on `endpoint`; calls waiting together share one."""
        if endpoint.check is None or endpoint.check.done():
            endpoint.check = asyncio.ensure_future(self._probe(endpoint))
        return await asyncio.shield(endpoint.check)

    async def _watched(self, endpoint: Endpoint, call: UpstreamCall, wait: Awaitable[T]) -> T:
        """`wait` (an exchange up to its first byte, or a whole answer) under the call's
        deadlines: `timeout_s` in all, and a liveness probe each `first_byte_timeout_s`."""
        task = asyncio.ensure_future(wait)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + call.timeout_s
        step = call.first_byte_timeout_s
        try:
            while True:
                left = deadline - loop.time()
                if left <= 0:
                    raise _Overran(
                        504, f"{self.name} timed out after {call.timeout_s:g} s", "upstream_timeout"
                    )
                done, _ = await asyncio.wait({task}, timeout=min(left, step or left))
                if done:
                    return task.result()
                if step and loop.time() < deadline and not await self._alive(endpoint):
                    if task.done():  # the answer came while the probe failed
                        return task.result()
                    raise _Frozen(
                        504,
                        f"{self.name}: {endpoint.base_url} sent nothing for {step:g} s and did "
                        f"not answer its health check within {self._health_timeout_s:g} s",
                        "upstream_timeout",
                    )
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task

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
                    self._failed(endpoint)  # as a failed completion call would
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

    def _failed(self, endpoint: Endpoint, eject: bool = False) -> None:
        endpoint.failures += 1
        if not eject and endpoint.failures < self._eject_after:
            return
        endpoint.ejections += 1
        # Back off longer after repeated ejections, capped at 8x the cooldown.
        cooldown = self._cooldown_s * min(2 ** (endpoint.ejections - 1), 8)
        endpoint.down_until = time.monotonic() + cooldown
        log.warning(
            "endpoint %s of %s ejected for %g s after %d failed calls in a row",
            endpoint.base_url, self.name, cooldown, endpoint.failures,
        )  # fmt: skip

    def _note(self, endpoint: Endpoint, err: UpstreamError | None) -> None:
        """Count a call's outcome towards ejection: only what says the endpoint is at fault."""
        if err is None:
            endpoint.failures = endpoint.ejections = 0
        elif isinstance(err, _Frozen):
            self._failed(endpoint, eject=True)
        elif err.retryable and err.status != 429 and not isinstance(err, _Overran):
            self._failed(endpoint)

    @staticmethod
    def _timeouts(call: UpstreamCall) -> httpx.Timeout:
        # Reads are bounded by _watched (and a stream's gaps by the pipeline), not by httpx.
        return httpx.Timeout(None, connect=call.connect_timeout_s)

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
                resp = await self._watched(
                    endpoint,
                    call,
                    self._client.post(
                        endpoint.base_url + _PATHS[call.kind],
                        content=payload,
                        headers={"content-type": "application/json"},
                        timeout=self._timeouts(call),
                    ),
                )
            except httpx.HTTPError as exc:
                last = _transport_error(exc, self.name)
                self._note(endpoint, last)
                continue
            except UpstreamError as err:  # frozen, or out of time
                self._note(endpoint, err)
                last = err
                continue
            finally:
                endpoint.outstanding -= 1
            if resp.status_code != 200:
                err = _error_from_response(resp.status_code, resp.content, endpoint.base_url)
                if not err.retryable:
                    err.attempts = tried
                    raise err
                self._note(endpoint, err)
                last = err
                continue
            try:
                body = orjson.loads(resp.content)
            except orjson.JSONDecodeError:
                last = UpstreamError(502, f"{self.name} answered with invalid JSON")
                self._note(endpoint, last)
                continue
            return self._completion(call, body, endpoint, tried[:-1])
        raise self._exhausted(last, tried)

    def _completion(
        self, call: UpstreamCall, body: Any, endpoint: Endpoint, failed: list[str]
    ) -> Completion:
        """A 200's body, its usage clamped to what the call can produce; a 502 that is still
        charged when it is no OpenAI answer."""
        bound = call_bound(call.body, self.context_length)
        problem = malformed_choices(call.kind, body)
        raw = body.get("usage") if isinstance(body, dict) else None
        if problem is not None:
            err = UpstreamError(
                502,
                f"{self.name} answered 200 but {problem}",
                attempts=[endpoint.base_url],
                usage=read_usage(raw, bound),
            )
            self._note(endpoint, err)
            raise err
        self._note(endpoint, None)
        body["model"] = self.name
        usage = read_usage(raw, bound, answer_bytes(call.kind, body))
        if usage.anomaly is not None:
            body["usage"] = usage_object(usage)  # the client sees what it is charged for
        return Completion(body, usage, endpoint.base_url, failed=failed)

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
                await stream.open(payload, call)
            except UpstreamError as err:
                if not err.retryable:
                    err.attempts = tried
                    raise
                self._note(endpoint, err)
                last = err
                continue
            self._note(endpoint, None)
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

    async def open(self, payload: bytes, call: UpstreamCall) -> None:
        pool = self._pool
        self._ep.outstanding += 1
        try:
            await pool._watched(self._ep, call, self._start(payload, call))
        except httpx.HTTPError as exc:
            await self.aclose()
            raise _transport_error(exc, pool.name) from None
        except BaseException:
            await self.aclose()
            raise

    async def _start(self, payload: bytes, call: UpstreamCall) -> None:
        """Send the request and read up to the first chunk."""
        pool = self._pool
        req = pool._client.build_request(
            "POST",
            self._ep.base_url + _PATHS[self._kind],
            content=payload,
            headers={"content-type": "application/json"},
            timeout=pool._timeouts(call),
        )
        self._resp = await pool._client.send(req, stream=True)
        if self._resp.status_code != 200:
            content = await self._resp.aread()
            raise _error_from_response(self._resp.status_code, content, self.endpoint)
        self._lines = self._resp.aiter_lines()
        self._first = await self._next_chunk()
        if self._first is None:
            raise UpstreamError(502, f"{pool.name} closed the stream before any data")

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
