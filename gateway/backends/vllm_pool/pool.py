"""VllmPool: one policy model served by a pool of vLLM OpenAI servers."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import orjson

from gateway.backends.base import Completion, UpstreamCall, UpstreamError
from gateway.backends.http_client import JsonPost
from gateway.backends.openai_shapes import embedding_usage, embeddings_as, usage_object
from gateway.backends.usage_bounds import (
    answer_bytes,
    malformed_choices,
    read_embedding_usage,
    read_usage,
)
from gateway.backends.vllm_pool.endpoints import Endpoint, EndpointHealth
from gateway.backends.vllm_pool.engine_poll import EnginePoller
from gateway.backends.vllm_pool.engine_state import EndpointReport, EngineState
from gateway.backends.vllm_pool.stream import (
    PATHS,
    VllmStream,
    error_from_response,
    transport_error,
    unreachable,
)
from gateway.tokens import call_bound, embedding_bound
from policies.schema import VllmModel

_NO_TEMPLATE = {400, 404, 422}  # /tokenize refused the messages: the model has no chat template


class VllmPool:
    """The endpoints of one model, tried by fewest outstanding requests (endpoints.py keeps
    their health); requests and the chat rendering EAD uses."""

    provider = "vllm"  # the GenAI provider name in traces (gateway/backends/traced.py)

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
        metrics_interval_s: float = 1.0,
    ):
        self.name = name
        self.served_name = config.served_name or name
        self.endpoints = [Endpoint(str(url)) for url in config.endpoints]
        self.context_length = config.context_length
        self._client = client
        # Each endpoint's completion calls, prepared once (gateway/backends/http_client.py).
        self._posts = {
            (e.base_url, kind): JsonPost(client, e.base_url + path)
            for e in self.endpoints
            for kind, path in PATHS.items()
        }
        self.health = EndpointHealth(
            name,
            self.endpoints,
            client,
            health_interval_s=health_interval_s,
            cooldown_s=cooldown_s,
            health_timeout_s=health_timeout_s,
            unhealthy_after=unhealthy_after,
            eject_after=eject_after,
        )
        self.engines = EnginePoller(
            name,
            self.endpoints,
            client,
            interval_s=metrics_interval_s,
            timeout_s=health_timeout_s,
        )

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        await asyncio.gather(self.health.start(), self.engines.start())

    async def aclose(self) -> None:
        await asyncio.gather(self.health.aclose(), self.engines.aclose())

    def healthy(self) -> bool:
        return self.health.healthy()

    async def probe_all(self) -> None:
        await self.health.probe_all()

    # -- the endpoints' own load (engine_poll.py), for scorers, /metrics and the dashboard --
    def engine_states(self) -> dict[str, EngineState]:
        """Each endpoint's last /metrics read, by base URL (empty where none is known)."""
        return {e.base_url: e.engine for e in self.endpoints}

    def endpoint_reports(self) -> list[EndpointReport]:
        now = time.monotonic()
        return [
            EndpointReport(e.base_url, e.usable(now), e.outstanding, e.engine_status, e.engine)
            for e in self.endpoints
        ]

    # -- chat rendering (the ChatRendering capability) -------------------------------------
    async def render_chat(
        self, messages: list[dict[str, Any]], timeout_s: float, retries: int
    ) -> str | None:
        """The chat rendered in the model's own chat template, as text; None when the server
        has no template. For callers that continue raw text through /completions (EAD).

        vLLM's /tokenize (at the server root) applies the template but answers token ids only,
        so /detokenize turns them back into text."""
        tried: list[str] = []
        last: UpstreamError | None = None
        for endpoint in self.health.order()[: retries + 1]:
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
                    self.health.failed(endpoint)  # as a failed completion call would
                last = UpstreamError(
                    503, f"model '{self.name}': rendering the chat failed", detail=repr(exc)
                )
        raise self._exhausted(last, tried)

    def _body(self, call: UpstreamCall, stream: bool) -> bytes:
        body = dict(call.body)
        body["model"] = self.served_name
        if stream:
            # Ask for usage on every chunk so a stream cut short is still counted exactly.
            body["stream_options"] = {"include_usage": True, "continuous_usage_stats": True}
        return orjson.dumps(body)

    def _attempts(self, call: UpstreamCall) -> list[Endpoint]:
        """The endpoints to try, in order (a list, not a generator: one fewer object per call
        on the hot path)."""
        return self.health.order()[: call.retries + 1]

    # -- calls ------------------------------------------------------------------------------
    async def complete(self, call: UpstreamCall) -> Completion:
        payload = self._body(call, stream=False)
        tried: list[str] = []
        last: UpstreamError | None = None
        for endpoint in self._attempts(call):
            tried.append(endpoint.base_url)
            endpoint.outstanding += 1
            try:
                post = self._posts[endpoint.base_url, call.kind]
                resp = await self.health.watched(
                    endpoint, call, post(payload, call.connect_timeout_s, call.headers)
                )
            except httpx.HTTPError as exc:
                last = transport_error(exc, self.name)
                self.health.note(endpoint, last)
                continue
            except UpstreamError as err:  # frozen, or out of time
                self.health.note(endpoint, err)
                last = err
                continue
            finally:
                endpoint.outstanding -= 1
            if resp.status_code != 200:
                err = error_from_response(resp.status_code, resp.content, endpoint.base_url)
                if not err.retryable:
                    err.attempts = tried
                    raise err
                self.health.note(endpoint, err)
                last = err
                continue
            try:
                body = orjson.loads(resp.content)
            except orjson.JSONDecodeError:
                last = UpstreamError(502, f"{self.name} answered with invalid JSON")
                self.health.note(endpoint, last)
                continue
            return self._completion(call, body, endpoint, tried[:-1])
        raise self._exhausted(last, tried)

    def _completion(
        self, call: UpstreamCall, body: Any, endpoint: Endpoint, failed: list[str]
    ) -> Completion:
        """A 200's body, its usage clamped to what the call can produce; a 502 that is still
        charged when it is no OpenAI answer."""
        embeddings = call.kind == "embeddings"
        bound = (embedding_bound if embeddings else call_bound)(call.body, self.context_length)
        problem = malformed_choices(call.kind, body)
        raw = body.get("usage") if isinstance(body, dict) else None
        if problem is not None:
            err = UpstreamError(
                502,
                f"{self.name} answered 200 but {problem}",
                attempts=[endpoint.base_url],
                usage=read_embedding_usage(raw, bound) if embeddings else read_usage(raw, bound),
            )
            self.health.note(endpoint, err)
            raise err
        self.health.note(endpoint, None)
        body["model"] = self.name
        if embeddings:
            usage = read_embedding_usage(raw, bound)
            # vLLM encodes base64 itself; the check costs nothing when it did as asked.
            embeddings_as(body, call.body.get("encoding_format"))
            if usage.anomaly is not None:
                body["usage"] = embedding_usage(usage.prompt_tokens)
            return Completion(body, usage, endpoint.base_url, failed=failed)
        usage = read_usage(raw, bound, answer_bytes(call.kind, body))
        if usage.anomaly is not None:
            body["usage"] = usage_object(usage)  # the client sees what it is charged for
        return Completion(body, usage, endpoint.base_url, failed=failed)

    def _exhausted(self, last: UpstreamError | None, tried: list[str]) -> UpstreamError:
        err = last or UpstreamError(503, unreachable(self.name), "upstream_unavailable")
        err.attempts = tried
        if err.status == 503 and err.retry_after_s is None:
            err.retry_after_s = self.health.retry_after_s()
        return err

    async def open_stream(self, call: UpstreamCall) -> VllmStream:
        payload = self._body(call, stream=True)
        tried: list[str] = []
        last: UpstreamError | None = None
        for endpoint in self._attempts(call):
            tried.append(endpoint.base_url)
            bound = call_bound(call.body, self.context_length)
            stream = VllmStream(self.name, self._client, self.health, endpoint, call.kind, bound)
            try:
                await stream.open(payload, call)
            except UpstreamError as err:
                if not err.retryable:
                    err.attempts = tried
                    raise
                self.health.note(endpoint, err)
                last = err
                continue
            self.health.note(endpoint, None)
            stream.attempts = tried
            return stream
        raise self._exhausted(last, tried)
