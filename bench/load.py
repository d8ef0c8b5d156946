"""Closed-loop HTTP load generator for OpenAI chat completions, kept as light as possible.

Each of `--concurrency` connections (HTTP/1.1 keep-alive) sends one POST, waits for the whole
response, and sends the next: a closed loop, so at concurrency C the server always has C
requests in flight. Latency is measured per request, from just before the request bytes are
written to the moment the last response byte is parsed. A warm-up period runs first and is
discarded; then every request that completes inside the measurement window is counted.

Why a hand-written client instead of aiohttp/httpx: on a 2-core machine the client shares the
CPU with the servers it measures, so every microsecond it spends per request is stolen from
them. This one is a bare asyncio protocol on uvloop with httptools' C response parser and a
pre-encoded request, so it costs a few microseconds per request. It reports its own CPU use
(`client_cpu`, fraction of one core) so a reader can tell when it may be the bottleneck.

    python bench/load.py http://127.0.0.1:8080 --concurrency 1 8 32 64 --duration 5
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import resource
import socket
import sys
import time
from array import array
from dataclasses import asdict, dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit

import httptools
import orjson
import uvloop

PROMPT = "Say hello in one short sentence."
# With --distinct-prompts N, request i asks one of these, numbered: a learned router meets a new
# prompt each time (its embedding LRU does not answer), as with real traffic.
VARIED = (
    "Say hello in one short sentence.",
    "What is the capital of Australia, and why is it not Sydney?",
    "Write a Python function that merges two sorted lists in linear time.",
    "Solve for x: 3x^2 - 12x + 9 = 0. Show every step.",
    "Summarise the plot of Hamlet in two sentences.",
    "Which of these is a prime number? A. 21 B. 27 C. 29 D. 33",
    "Translate into French: the meeting has been moved to Thursday afternoon.",
    "Explain the difference between TCP and UDP to a ten-year-old.",
)


@dataclass
class Result:
    url: str
    concurrency: int
    stream: bool
    duration_s: float
    requests: int
    errors: int
    rps: float
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    ttfb_p50_ms: float  # time to the first response body byte: the first SSE chunk if streaming
    ttfb_p99_ms: float
    client_cpu: float  # CPU seconds the load generator used per wall second (1.0 = one core)
    completed_total: int  # every response received, warm-up included (for CPU per request)
    error_samples: list[str] = field(default_factory=list)


def build_request(
    url: str,
    model: str,
    stream: bool,
    api_key: str | None,
    max_tokens: int,
    prompt: str = PROMPT,
) -> tuple[str, int, bytes]:
    """Host, port and the complete pre-encoded request: nothing is encoded per request."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 80
    base = parts.path.rstrip("/")
    path = f"{base}/chat/completions" if base.endswith("/v1") else f"{base}/v1/chat/completions"
    payload: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    if stream:
        payload["stream"] = True
        payload["stream_options"] = {"include_usage": True}
    body = orjson.dumps(payload)
    headers = [
        f"POST {path} HTTP/1.1",
        f"host: {host}:{port}",
        "content-type: application/json",
        "accept: application/json",
        f"content-length: {len(body)}",
    ]
    if api_key:
        headers.append(f"authorization: Bearer {api_key}")
    return host, port, ("\r\n".join(headers) + "\r\n\r\n").encode() + body


class ClientConn(asyncio.Protocol):
    """One keep-alive connection with at most one request in flight."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[int] | None = None
        self.first_byte_ns = 0
        self.keep_body = False  # only the first response of a connection is kept, to check it
        self.body: list[bytes] = []
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, hence a cast, not a check.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionError(f"bad response: {exc}"))

    def on_body(self, body: bytes) -> None:
        if not self.first_byte_ns:
            self.first_byte_ns = time.perf_counter_ns()
        if self.keep_body:
            self.body.append(body)

    def on_message_complete(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(self.parser.get_status_code())
        if not self.parser.should_keep_alive() and self.transport is not None:
            self.transport.close()
            self.lost = True

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._fail(ConnectionError(f"connection lost: {exc}"))

    def _fail(self, exc: Exception) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_exception(exc)
        if self.transport is not None:
            self.transport.close()
        self.lost = True

    def send(self, request: bytes, timeout_s: float) -> asyncio.Future[int]:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        self.first_byte_ns = 0
        self.waiter = w = loop.create_future()
        # A bare timer handle, cheaper than wrapping every request in asyncio.wait_for.
        timer = loop.call_later(timeout_s, self._fail, TimeoutError("request timed out"))
        w.add_done_callback(lambda _: timer.cancel())
        self.transport.write(request)
        return w


def _check_body(body: bytes, stream: bool) -> str | None:
    """A sanity check of a response: catches a server that answers 200 with the wrong thing."""
    if stream:
        if b"data: [DONE]" not in body or b'"choices"' not in body:
            return f"stream without chunks or [DONE]: {body[:200]!r}"
        return None
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return f"not JSON: {body[:200]!r}"
    if not isinstance(doc, dict) or not doc.get("choices") or "usage" not in doc:
        return f"no choices/usage: {body[:200]!r}"
    return None


def _pct(sorted_ns: array, q: float) -> float:
    if not sorted_ns:
        return float("nan")
    i = min(len(sorted_ns) - 1, max(0, round(q * len(sorted_ns)) - 1))
    return sorted_ns[i] / 1e6


async def run_point(
    url: str,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    *,
    model: str = "auto",
    stream: bool = False,
    api_key: str | None = None,
    max_tokens: int = 16,
    timeout_s: float = 30.0,
    distinct_prompts: int = 1,
) -> Result:
    host, port, request = build_request(url, model, stream, api_key, max_tokens)
    # Pre-encoded too: one per prompt, taken in turn by every connection.
    prompts = [f"{VARIED[i % len(VARIED)]} ({i})" for i in range(1, max(1, distinct_prompts))]
    requests = [request] + [
        build_request(url, model, stream, api_key, max_tokens, text)[2] for text in prompts
    ]
    sent = 0
    loop = asyncio.get_running_loop()
    lat = array("q")
    ttfb = array("q")
    errors = 0
    completed = 0
    samples: list[str] = []

    def note(msg: str) -> None:
        nonlocal errors
        errors += 1
        if len(samples) < 5:
            samples.append(msg)

    async def connect() -> ClientConn:
        _, proto = await loop.create_connection(ClientConn, host, port)
        proto.keep_body = True
        return proto

    t_start = time.perf_counter_ns() + int(warmup_s * 1e9)
    t_end = t_start + int(duration_s * 1e9)

    async def worker() -> None:
        nonlocal completed, sent
        conn: ClientConn | None = None
        while True:
            t0 = time.perf_counter_ns()
            if t0 >= t_end:
                break
            try:
                if conn is None or conn.lost:
                    conn = await connect()
                sent += 1
                status = await conn.send(requests[sent % len(requests)], timeout_s)
            except (OSError, ConnectionError, TimeoutError) as exc:
                if conn is not None and conn.transport is not None:
                    conn.transport.close()
                conn = None
                if time.perf_counter_ns() >= t_start:
                    note(f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(0.01)  # do not spin on a refused connection
                continue
            t1 = time.perf_counter_ns()
            completed += 1
            if conn.keep_body:
                conn.keep_body = False
                problem = _check_body(b"".join(conn.body), stream) if status == 200 else None
                conn.body = []
                if problem:
                    note(problem)
                    continue
            if t1 < t_start:
                continue  # warm-up
            if t1 > t_end:
                break  # finished after the window closed: neither counted nor timed
            if status != 200:
                note(f"HTTP {status}")
                continue
            lat.append(t1 - t0)
            ttfb.append((conn.first_byte_ns or t1) - t0)
        if conn is not None and conn.transport is not None:
            conn.transport.close()

    # Garbage collection pauses would show up as client-made tail latency; nothing here makes
    # reference cycles in the loop, so it is off while measuring.
    gc.collect()
    gc.disable()
    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    # CPU use is taken over the measurement window only.
    await asyncio.sleep(max(0.0, (t_start - time.perf_counter_ns()) / 1e9))
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    w0 = time.perf_counter()
    await asyncio.sleep(max(0.0, (t_end - time.perf_counter_ns()) / 1e9))
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    wall = time.perf_counter() - w0
    await asyncio.gather(*tasks)
    gc.enable()

    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    lat_sorted = array("q", sorted(lat))
    ttfb_sorted = array("q", sorted(ttfb))
    n = len(lat_sorted)
    return Result(
        url=url,
        concurrency=concurrency,
        stream=stream,
        duration_s=duration_s,
        requests=n,
        errors=errors,
        rps=n / duration_s,
        mean_ms=(sum(lat_sorted) / n / 1e6) if n else float("nan"),
        p50_ms=_pct(lat_sorted, 0.50),
        p90_ms=_pct(lat_sorted, 0.90),
        p99_ms=_pct(lat_sorted, 0.99),
        max_ms=(lat_sorted[-1] / 1e6) if n else float("nan"),
        ttfb_p50_ms=_pct(ttfb_sorted, 0.50),
        ttfb_p99_ms=_pct(ttfb_sorted, 0.99),
        client_cpu=cpu / wall if wall > 0 else float("nan"),
        completed_total=completed,
        error_samples=samples,
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("url", help="server root or OpenAI base URL, e.g. http://127.0.0.1:8080/v1")
    ap.add_argument("--concurrency", "-c", type=int, nargs="+", default=[1, 8, 32, 64])
    ap.add_argument("--duration", "-d", type=float, default=5.0, help="seconds measured per level")
    ap.add_argument("--warmup", "-w", type=float, default=1.0, help="seconds discarded first")
    ap.add_argument("--model", default="auto")
    ap.add_argument("--stream", action="store_true", help="stream (SSE, with include_usage)")
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--timeout", type=float, default=30.0, help="per-request timeout (s)")
    ap.add_argument("--json", action="store_true", help="print one JSON object per level")
    ap.add_argument(
        "--distinct-prompts",
        type=int,
        default=1,
        metavar="N",
        help="cycle through N different prompts (default 1: the same prompt every time)",
    )
    args = ap.parse_args(argv)

    async def run_all() -> list[Result]:
        out = []
        for c in args.concurrency:
            out.append(
                await run_point(
                    args.url,
                    c,
                    args.duration,
                    args.warmup,
                    model=args.model,
                    stream=args.stream,
                    api_key=args.api_key,
                    max_tokens=args.max_tokens,
                    timeout_s=args.timeout,
                    distinct_prompts=args.distinct_prompts,
                )
            )
        return out

    for r in uvloop.run(run_all()):
        if args.json:
            sys.stdout.write(orjson.dumps(asdict(r)).decode() + "\n")
        else:
            print(
                f"c={r.concurrency:<3} {r.rps:9.0f} req/s  p50 {r.p50_ms:7.3f} ms  "
                f"p99 {r.p99_ms:7.3f} ms  errors {r.errors}  client_cpu {r.client_cpu:.2f}"
                + (f"  e.g. {r.error_samples[0]}" if r.error_samples else "")
            )
        sys.stdout.flush()


if __name__ == "__main__":
    main()
