"""What tracing costs a request: the whole app in-process (fake backend, no sockets), CPU time
per chat completion with tracing off (the default) and on (the SDK, every span exported to an
exporter that drops them, so only the gateway's own span work is counted).

    python bench/tracing_overhead.py                 # off and on, 5 rounds of 2000 requests
    python bench/tracing_overhead.py --modes off     # e.g. from a checkout without tracing

Rounds alternate between the modes and the best round of each counts (the least disturbed by
other processes on the machine). Run it from another checkout's root (`cd` there, or
PYTHONPATH) to compare that code's off path with this one's.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path.cwd()))

import httpx

from gateway.app import Settings, create_app
from tests.support.fake_backend import FakeBackends

POLICY = """
version: 1
defaults: {max_tokens: 16}
models:
  m:
    provider: vllm
    endpoints: [http://m.invalid/v1]
    pricing: {input_per_1m: 1.0, output_per_1m: 2.0}
routes:
  auto: {models: [m]}
"""
BODY = {"model": "auto", "messages": [{"role": "user", "content": "hello"}]}


def tracing_on() -> Any:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    from gateway.tracing import Tracing

    class Drop(SpanExporter):
        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(Drop()))
    return Tracing.of(provider)


async def round_us(mode: str, n: int, work: Path) -> float:
    """CPU microseconds per request over `n` requests (after a warm-up)."""
    work.mkdir()
    policy = work / "policy.yaml"
    policy.write_text(POLICY)
    settings = Settings(
        policy_path=policy,
        log_path=work / f"{mode}.sqlite",
        state_path=work / f"{mode}-state.sqlite",
        watch_policy=False,
        backend_factory=FakeBackends(),
    )
    if "tracing" in Settings.__dataclass_fields__:  # a checkout from before tracing has none
        from gateway.tracing import Tracing

        settings.tracing = tracing_on() if mode == "on" else Tracing()
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        gc.unfreeze()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            for _ in range(200):
                assert (await client.post("/v1/chat/completions", json=BODY)).status_code == 200
            gc.collect()
            t0 = time.process_time()
            for _ in range(n):
                await client.post("/v1/chat/completions", json=BODY)
            return (time.process_time() - t0) / n * 1e6


async def main(modes: list[str], rounds: int, n: int) -> None:
    best: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for mode in modes:
                us = await round_us(mode, n, Path(tmp) / f"{mode}-{r}")
                best[mode] = min(best.get(mode, us), us)
                print(f"round {r + 1} {mode:>3}: {us:7.1f} us/request", file=sys.stderr)
    for mode, us in best.items():
        print(f"tracing {mode}: {us:.1f} us CPU per request (best of {rounds} x {n})")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--modes", nargs="+", default=["off", "on"], choices=["off", "on"])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--requests", "-n", type=int, default=2000)
    args = ap.parse_args()
    asyncio.run(main(args.modes, args.rounds, args.requests))
