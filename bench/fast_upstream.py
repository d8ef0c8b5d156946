"""A deliberately cheap OpenAI-compatible upstream for overhead benchmarks.

It answers like vLLM's OpenAI server (same JSON shapes, usage, SSE chunks, `data: [DONE]`), but
does no work: every response body is built once per served model name and then only written.
The server is a raw asyncio protocol on uvloop with httptools' C parser (no ASGI, no framework),
so one process serves tens of thousands of requests per second on one core: it must never be
what a gateway benchmark measures.

    python bench/fast_upstream.py --port 18001 [--workers 2] [--delay-ms 0]

Routes: POST /v1/chat/completions, POST /v1/completions (both with `stream`, and
`stream_options.include_usage`), GET /v1/models, GET /health, and GET /stats (connections
accepted and requests served by the worker that answers).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any, cast

import httptools
import orjson
import uvloop

PROMPT_TOKENS = 12
COMPLETION_TOKENS = 8
# The completion text, split into the deltas a streaming answer sends (one token each, roughly).
PIECES = ["Hello", "!", " How", " can", " I", " help", " you", "?"]
CREATED = int(time.time())
USAGE = {
    "prompt_tokens": PROMPT_TOKENS,
    "completion_tokens": COMPLETION_TOKENS,
    "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
}


def _http(status: str, body: bytes, content_type: bytes = b"application/json") -> bytes:
    return (
        b"HTTP/1.1 " + status.encode() + b"\r\n"
        b"content-type: " + content_type + b"\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n"
        b"\r\n" + body
    )


def _chunked(events: list[dict[str, Any]]) -> bytes:
    """A whole SSE response, one HTTP chunk per event, as uvicorn sends vLLM's stream."""
    out = [
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
        b"transfer-encoding: chunked\r\n\r\n"
    ]
    payloads = [b"data: " + orjson.dumps(e) + b"\n\n" for e in events] + [b"data: [DONE]\n\n"]
    for p in payloads:
        out.append(f"{len(p):x}\r\n".encode() + p + b"\r\n")
    out.append(b"0\r\n\r\n")
    return b"".join(out)


def _chat(model: str, stream: bool, usage: bool) -> bytes:
    rid = "chatcmpl-bench0000000000000000000000000000"
    if not stream:
        return _http(
            "200 OK",
            orjson.dumps(
                {
                    "id": rid,
                    "object": "chat.completion",
                    "created": CREATED,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {
                                "role": "assistant",
                                "content": "".join(PIECES),
                                "tool_calls": [],
                            },
                            "logprobs": None,
                            "finish_reason": "stop",
                            "stop_reason": None,
                        }
                    ],
                    "usage": USAGE,
                    "prompt_logprobs": None,
                }
            ),
        )
    base = {"id": rid, "object": "chat.completion.chunk", "created": CREATED, "model": model}
    events: list[dict[str, Any]] = [
        {
            **base,
            "choices": [
                {
                    "index": 0,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": None,
                    "finish_reason": None,
                }
            ],
        }
    ]
    for i, piece in enumerate(PIECES):
        last = i == len(PIECES) - 1
        events.append(
            {
                **base,
                "choices": [
                    {
                        "index": 0,
                        "delta": {"content": piece},
                        "logprobs": None,
                        "finish_reason": "stop" if last else None,
                    }
                ],
            }
        )
    if usage:
        events.append({**base, "choices": [], "usage": USAGE})
    return _chunked(events)


def _completion(model: str, stream: bool, usage: bool) -> bytes:
    rid = "cmpl-bench00000000000000000000000000000000"
    base = {"id": rid, "object": "text_completion", "created": CREATED, "model": model}
    if not stream:
        return _http(
            "200 OK",
            orjson.dumps(
                {
                    **base,
                    "choices": [
                        {
                            "index": 0,
                            "text": "".join(PIECES),
                            "logprobs": None,
                            "finish_reason": "stop",
                            "stop_reason": None,
                        }
                    ],
                    "usage": USAGE,
                }
            ),
        )
    events: list[dict[str, Any]] = []
    for i, piece in enumerate(PIECES):
        last = i == len(PIECES) - 1
        events.append(
            {
                **base,
                "choices": [
                    {
                        "index": 0,
                        "text": piece,
                        "logprobs": None,
                        "finish_reason": "stop" if last else None,
                    }
                ],
            }
        )
    if usage:
        events.append({**base, "choices": [], "usage": USAGE})
    return _chunked(events)


_BUILDERS: dict[bytes, Callable[[str, bool, bool], bytes]] = {
    b"/v1/chat/completions": _chat,
    b"/v1/completions": _completion,
}
# (path, model, stream, include_usage) -> full HTTP response; a handful of entries in practice.
_CACHE: dict[tuple[bytes, str, bool, bool], bytes] = {}
HEALTH = _http("200 OK", b"")
NOT_FOUND = _http("404 Not Found", b'{"error":{"message":"not found","type":"NotFound"}}')
BAD_REQUEST = _http("400 Bad Request", b'{"error":{"message":"bad json","type":"BadRequest"}}')


def _models(name: str) -> bytes:
    return _http(
        "200 OK",
        orjson.dumps(
            {
                "object": "list",
                "data": [
                    {
                        "id": name,
                        "object": "model",
                        "created": CREATED,
                        "owned_by": "bench",
                        "root": name,
                        "parent": None,
                        "max_model_len": 4096,
                    }
                ],
            }
        ),
    )


# Counters served at GET /stats (per worker process): lets the benchmark see whether a gateway
# reuses its upstream connections and sends one upstream request per client request.
STATS = {"connections": 0, "requests": 0}


def _answer(method: bytes, path: bytes, body: bytes, default_model: str) -> bytes:
    path = path.split(b"?", 1)[0]
    STATS["requests"] += 1
    builder = _BUILDERS.get(path)
    if builder is not None and method == b"POST":
        try:
            req = orjson.loads(body)
            model = str(req.get("model") or default_model)
            stream = bool(req.get("stream"))
            opts = req.get("stream_options") or {}
            usage = bool(opts.get("include_usage")) if isinstance(opts, dict) else False
        except (orjson.JSONDecodeError, AttributeError):
            return BAD_REQUEST
        key = (path, model, stream, usage)
        resp = _CACHE.get(key)
        if resp is None:
            if len(_CACHE) > 256:  # bound the cache if a client sends many model names
                _CACHE.clear()
            resp = _CACHE[key] = builder(model, stream, usage)
        return resp
    if method == b"GET" and path == b"/health":
        return HEALTH
    if method == b"GET" and path == b"/stats":
        STATS["requests"] -= 1  # reading the counters is not traffic
        return _http("200 OK", orjson.dumps({**STATS, "pid": os.getpid()}))
    if method == b"GET" and path == b"/v1/models":
        return _models(default_model)
    return NOT_FOUND


class UpstreamProtocol(asyncio.Protocol):
    """One HTTP/1.1 keep-alive connection; httptools calls back into it as bytes arrive."""

    __slots__ = ("body", "delay", "keep_alive", "model", "parser", "transport", "url")

    def __init__(self, model: str, delay: float) -> None:
        self.model = model
        self.delay = delay
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.body: list[bytes] = []
        self.keep_alive = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, hence a cast, not a check.
        self.transport = cast(asyncio.Transport, transport)
        STATS["connections"] += 1
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.write(BAD_REQUEST)
                self.transport.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url = b""
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        resp = _answer(self.parser.get_method(), self.url, b"".join(self.body), self.model)
        keep = self.parser.should_keep_alive()
        if self.delay > 0:
            # call_later keeps responses in request order: every call waits the same delay.
            asyncio.get_running_loop().call_later(self.delay, self._send, resp, keep)
        else:
            self._send(resp, keep)

    def _send(self, resp: bytes, keep: bool) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        t.write(resp)
        if not keep:
            t.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


def _listen(host: str, port: int, reuse_port: bool) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


def _serve(sock: socket.socket, model: str, delay: float) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: UpstreamProtocol(model, delay), sock=sock)
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        server.close()

    uvloop.run(main())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=18001)
    ap.add_argument("--model", default="fast", help="name listed by /v1/models")
    ap.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes sharing the port via SO_REUSEPORT (default 1)",
    )
    ap.add_argument(
        "--delay-ms",
        type=float,
        default=0.0,
        help="artificial latency before each response is written",
    )
    args = ap.parse_args(argv)

    delay = args.delay_ms / 1000.0
    if args.workers <= 1:
        _serve(_listen(args.host, args.port, reuse_port=False), args.model, delay)
        return
    # One listening socket per worker with SO_REUSEPORT: the kernel spreads connections.
    children: list[int] = []
    for _ in range(args.workers):
        sock = _listen(args.host, args.port, reuse_port=True)
        pid = os.fork()
        if pid == 0:
            _serve(sock, args.model, delay)
            os._exit(0)
        sock.close()
        children.append(pid)

    def forward(signum: int, _frame: object) -> None:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for pid in children:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    sys.exit(0)


if __name__ == "__main__":
    main()
