"""A controllable OpenAI-compatible upstream for tests of failure handling.

Real HTTP on 127.0.0.1 (uvicorn in a thread). Tests set `mode` to make it fail the way a sick
vLLM server does; everything else is exercised against real vLLM in tests/integration.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

# Usage no real server reports: what the modes of the same names answer with.
HOSTILE_USAGE: dict[str, dict[str, Any]] = {
    "negative_usage": {"prompt_tokens": 7, "completion_tokens": -1_000_000, "total_tokens": -1},
    "absurd_usage": {
        "prompt_tokens": 10**12,
        "completion_tokens": 10**12,
        "total_tokens": 2 * 10**12,
    },
    "non_numeric_usage": {"prompt_tokens": "seven", "completion_tokens": None, "total_tokens": []},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Upstream:
    name: str = "up"
    mode: str = "ok"  # ok | 500 | 400 | 401 | 404 | 429 | slow | unhealthy | drip | garbage
    # Hostile shapes of a 200: no_choices | bad_choices | no_usage (whole answers; no_usage
    # also drops usage from streams), and the usage presets in HOSTILE_USAGE (both).
    # ... | hang (accepts, never answers) | slow_first (stream headers, then delay_s, then chunks)
    delay_s: float = 0.0
    prompt_tokens: int = 7  # what the usage reports for every prompt
    hits: int = 0
    health_hits: int = 0
    disconnects: int = 0
    bodies: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)  # each call's, beside its body
    port: int = field(default_factory=free_port)
    # When set, every usage the upstream reports (whole answers, each stream chunk) is this.
    usage_report: dict[str, Any] | None = None
    # The finish_reason of a stream's last text chunk (litellm's chat streams need one).
    stream_finish: str | None = None
    drip_interval_s: float = 0.05  # drip: the pause after each chunk
    drip_chunks: int = 200  # drip: chunks before the end
    continuous_usage: bool = True  # streams: usage on every chunk, as vLLM's continuous stats
    finish_reason: str = "stop"  # of non-streaming answers
    hang_health: bool = False  # /health accepts and never answers too
    # Completion requests that reached the app, read or not: one whose client left before its
    # body was read (a frozen server reading its backlog) counts here, not in `hits`.
    arrivals: int = 0
    # GET /metrics: this text as Prometheus exposition (None: 404, as a non-vLLM server).
    metrics_text: str | None = None
    metrics_hits: int = 0
    _server: uvicorn.Server | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _usage(self, completion: int) -> dict[str, Any]:
        if self.usage_report is not None:
            return dict(self.usage_report)
        if self.mode in HOSTILE_USAGE:
            return dict(HOSTILE_USAGE[self.mode])
        p = self.prompt_tokens
        return {"prompt_tokens": p, "completion_tokens": completion, "total_tokens": p + completion}

    def _embeddings_answer(self, body: dict[str, Any]) -> dict[str, Any]:
        inputs = body.get("input")
        count = len(inputs) if isinstance(inputs, list) and not isinstance(inputs[0], int) else 1
        usage = self._usage(0)
        usage.pop("completion_tokens", None)  # OpenAI's embeddings usage has none
        data = [{"object": "embedding", "index": i, "embedding": [0.5, 0.25]} for i in range(count)]
        return {"object": "list", "model": body.get("model"), "data": data, "usage": usage}

    def _answer(self, body: dict[str, Any], kind: str) -> dict[str, Any]:
        if kind == "embeddings":
            return self._embeddings_answer(body)
        usage = self._usage(5)
        if kind == "chat":
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": f"hi from {self.name}"},
                "finish_reason": self.finish_reason,
                "logprobs": None,
            }
            obj = "chat.completion"
        else:
            choice = {
                "index": 0,
                "text": f"hi from {self.name}",
                "finish_reason": self.finish_reason,
                "logprobs": None,
            }
            obj = "text_completion"
        answer: dict[str, Any] = {
            "id": "x-1",
            "object": obj,
            "created": 1,
            "model": body.get("model"),
            "choices": [choice],
            "usage": usage,
        }
        if self.mode == "no_choices":
            del answer["choices"]
        elif self.mode == "bad_choices":
            answer["choices"] = "none today"
        elif self.mode == "no_usage":
            del answer["usage"]
        return answer

    async def _completion(self, request: Request) -> Response:
        path = request.url.path
        kind = "chat" if path.endswith("chat/completions") else "completions"
        kind = "embeddings" if path.endswith("/embeddings") else kind
        self.arrivals += 1
        body = orjson.loads(await request.body())
        self.hits += 1
        self.bodies.append(body)
        self.headers.append(dict(request.headers))
        if self.mode in {"500", "400", "401", "404", "429"}:
            err = {
                "error": {
                    "message": f"{self.name} says {self.mode}",
                    "type": "x",
                    "param": "max_tokens" if self.mode == "400" else None,
                    "code": 1,
                }
            }
            return Response(orjson.dumps(err), int(self.mode), media_type="application/json")
        if self.mode == "garbage":
            return Response(b"<html>proxy error</html>", media_type="application/json")
        if self.mode == "hang":
            try:
                await asyncio.Event().wait()  # until the client goes away
            except asyncio.CancelledError:
                self.disconnects += 1
                raise
        if self.mode == "slow":
            await asyncio.sleep(self.delay_s)
        if not body.get("stream"):
            return Response(orjson.dumps(self._answer(body, kind)), media_type="application/json")
        return StreamingResponse(self._stream(body, kind), media_type="text/event-stream")

    async def _stream(self, body: dict[str, Any], kind: str):  # type: ignore[no-untyped-def]
        obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
        n = self.drip_chunks if self.mode == "drip" else 5
        try:
            if self.mode == "slow_first":
                yield b": waiting\n\n"  # the headers and a comment go out; the first chunk waits
                await asyncio.sleep(self.delay_s)
            for i in range(n):
                delta = {"delta": {"content": f"t{i} "}} if kind == "chat" else {"text": f"t{i} "}
                chunk: dict[str, Any] = {
                    "id": "x",
                    "object": obj,
                    "created": 1,
                    "model": body.get("model"),
                    "choices": [{"index": 0, **delta, "finish_reason": None}],
                }
                if i == n - 1 and self.stream_finish is not None:
                    chunk["choices"][0]["finish_reason"] = self.stream_finish
                if self.mode != "no_usage" and self.continuous_usage:
                    chunk["usage"] = self._usage(i + 1)
                yield b"data: " + orjson.dumps(chunk) + b"\n\n"
                if self.mode == "drip":
                    await asyncio.sleep(self.drip_interval_s)
            final = {
                "id": "x",
                "object": obj,
                "created": 1,
                "model": body.get("model"),
                "choices": [],
                "usage": self._usage(n),
            }
            if self.mode != "no_usage":
                yield b"data: " + orjson.dumps(final) + b"\n\n"
            yield b"data: [DONE]\n\n"
        except asyncio.CancelledError:
            self.disconnects += 1
            raise

    async def _health(self, request: Request) -> Response:
        self.health_hits += 1
        if self.hang_health:
            await asyncio.Event().wait()
        return Response(status_code=503 if self.mode == "unhealthy" else 200)

    async def _metrics(self, request: Request) -> Response:
        self.metrics_hits += 1
        if self.metrics_text is None:
            return Response(status_code=404)
        return Response(self.metrics_text, media_type="text/plain; version=0.0.4")

    async def _stats(self, request: Request) -> Response:
        """The counters, for an upstream run in another process (tests/support/upstream_process)."""
        stats = {
            "hits": self.hits,
            "arrivals": self.arrivals,
            "health_hits": self.health_hits,
            "disconnects": self.disconnects,
        }
        return Response(orjson.dumps(stats), media_type="application/json")

    def start(self) -> Upstream:
        app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._completion, methods=["POST"]),
                Route("/v1/completions", self._completion, methods=["POST"]),
                Route("/v1/embeddings", self._completion, methods=["POST"]),
                Route("/health", self._health),
                Route("/metrics", self._metrics),
                Route("/stats", self._stats),
            ]
        )
        self._server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error", lifespan="off")
        )
        threading.Thread(target=self._server.run, daemon=True).start()
        deadline = time.time() + 10
        while not self._server.started:
            if time.time() > deadline:
                raise RuntimeError("test upstream did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self._server:
            self._server.should_exit = True
            time.sleep(0.2)
