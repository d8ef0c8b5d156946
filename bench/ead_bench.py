"""Entropy Adaptive Decoding against any two vLLM endpoints: for each threshold, how much of the
answer the large model wrote, how often control switched, what a switch adds to latency, and
what EAD costs against the large model alone.

    python bench/ead_bench.py                       # the demo servers (routegate demo up)
    python bench/ead_bench.py \\
        --small http://gpu:8001/v1 --small-model meta-llama/Llama-3.2-1B-Instruct \\
        --large http://gpu:8002/v1 --large-model meta-llama/Llama-3.1-8B-Instruct \\
        --small-price 0.02 0.05 --large-price 0.15 0.60 --thresholds inf,2.0,1.5,1.0,0.5,0

Requests run one at a time (latency, not throughput). Per threshold:

- large share: the large model's tokens / all tokens of the answers;
- switches: hand-overs to the large model, per request;
- added ms / switch: (EAD wall time - the small-only run's ms per token x the tokens answered)
  / switches. The small-only run (threshold inf, the same prompts and chunking) is the
  baseline: what the answer would have taken without switching. `in-run` is the cascade's own
  estimate (time the large model held control, less the small model's pace for those tokens,
  plus the small tokens thrown away), from the request's own small calls;
- cost / large: EAD's cost (every call of both models, re-sent prompts included) over the large
  model answering the same prompts alone with the same max_tokens, at the given prices, every
  prompt token at the input price (what the gateway charged before it read cached tokens);
- cached priced: the same with the prompt tokens vLLM served from its prefix cache
  (`usage.prompt_tokens_details.cached_tokens`, servers run with
  --enable-prompt-tokens-details) at the cached input price (`--*-cached-price`, default a
  tenth of the input price, as providers' cache reads go), and at none (GPU-hour pricing:
  only the uncached prefill costs GPU time), for EAD and for the large model alone alike;
- cached / prompt: the share of EAD's prompt tokens served from cache. Within one EAD
  request each model's calls go to one endpoint (its prefix cache holds the text so far).

With `--start-servers` the bench starts its own tiny-small and tiny-large vLLM servers (dev
mode) and empties both prefix caches before every request, so a cache hit is only a re-send
within that request, never a repeat of the same prompt from an earlier run; against servers
that refuse the reset (not in dev mode) it says so, and hits from earlier requests count too.
Those servers cache in blocks of `--block-size` tokens, 32 by default: vLLM's default on CPU
is 128, more than the whole prompt and text of most of these requests (~40-110 tokens), so
nothing would ever be cached; 32 is the smallest its CPU attention takes (a multiple of 32),
vLLM on GPU uses 16 (`--block-size 0` keeps the server default).

    python bench/ead_bench.py --start-servers --json var/bench/ead.json   # ~4 minutes
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cascades.ead import EadCascade
from gateway.backends.base import Backend, UpstreamCall
from gateway.backends.http_client import new_upstream_client
from gateway.backends.vllm_pool import VllmPool
from policies.pricing import CostFn, price_table
from policies.schema import EadRoute, Policy, TokenPricing, VllmModel

PROMPTS = [
    "What is the capital of Australia, and why is it not Sydney?",
    "Write a Python function that merges two sorted lists in linear time.",
    "Solve for x: 3x^2 - 12x + 9 = 0. Show every step.",
    "Summarise why the sky is blue in two sentences.",
    "Plan a three day trip to Lisbon on a budget.",
    "Compare PostgreSQL and SQLite for a small web app.",
    "Translate into French: The meeting has been moved to Thursday afternoon.",
    "Prove that the square root of 2 is irrational.",
    "Explain the difference between TCP and UDP to a ten-year-old.",
    "Write a haiku about autumn rain.",
    "List three uses of a hash map.",
    "What causes inflation?",
]
SMALL, LARGE = "small", "large"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--small", default="http://127.0.0.1:8101/v1", help="small model base URL")
    p.add_argument("--small-model", default="tiny-small", help="its served name")
    p.add_argument("--large", default="http://127.0.0.1:8102/v1", help="large model base URL")
    p.add_argument("--large-model", default="tiny-large", help="its served name")
    p.add_argument(
        "--small-price",
        nargs=2,
        type=float,
        default=[0.10, 0.20],
        metavar=("IN", "OUT"),
        help="USD per 1M input, output tokens",
    )
    p.add_argument(
        "--large-price",
        nargs=2,
        type=float,
        default=[1.00, 3.00],
        metavar=("IN", "OUT"),
        help="USD per 1M input, output tokens",
    )
    p.add_argument("--small-cached-price", type=float, help="USD per 1M cached (default IN / 10)")
    p.add_argument("--large-cached-price", type=float, help="USD per 1M cached (default IN / 10)")
    p.add_argument(
        "--start-servers",
        action="store_true",
        help="start tiny-small and tiny-large vLLM servers here (and reset caches per request)",
    )
    p.add_argument(
        "--block-size",
        type=int,
        default=32,
        help="the started servers' KV block size (0: vLLM's default, 128 on CPU)",
    )
    p.add_argument("--models-dir", type=Path, default=Path("var/models"))
    p.add_argument("--log-dir", type=Path, default=Path("var/logs/ead-bench"))
    p.add_argument(
        "--thresholds",
        default="inf,1.59,1.575,1.55,1.5,0",
        help="comma-separated, nats; inf = small model only",
    )
    p.add_argument("--prompts", type=int, default=8, help=f"how many (at most {len(PROMPTS)})")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--window", type=int, default=4)
    p.add_argument("--span", type=int, default=16)
    p.add_argument("--chunk", type=int, default=16)
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--repeat", type=int, default=3, help="runs per threshold; the fastest is kept")
    p.add_argument("--json", type=Path, help="also write the figures here")
    return p.parse_args(argv)


def build_policy(a: argparse.Namespace, cached: str = "list") -> Policy:
    """The two models at the bench's prices; `cached`: how a cached prompt token is priced,
    `full` (the input price), `list` (the cached price) or `free` (GPU-hour prefill)."""

    def model(url: str, served: str, price: list[float], cached_price: float | None) -> dict:
        per_1m = {
            "full": price[0],
            "list": price[0] / 10 if cached_price is None else cached_price,
            "free": 0.0,
        }[cached]
        return {
            "provider": "vllm",
            "endpoints": [url],
            "served_name": served,
            "pricing": {
                "input_per_1m": price[0],
                "output_per_1m": price[1],
                "cached_input_per_1m": per_1m,
            },
        }

    return Policy.model_validate(
        {
            "models": {
                SMALL: model(a.small, a.small_model, a.small_price, a.small_cached_price),
                LARGE: model(a.large, a.large_model, a.large_price, a.large_cached_price),
            }
        }
    )


PRICINGS = ("full", "list", "free")  # how cached tokens are priced: see build_policy


class Tokens:
    """Prompt, cached-prompt and completion tokens per model, summed over requests."""

    __slots__ = ("by_model",)

    def __init__(self) -> None:
        self.by_model: dict[str, list[int]] = {}

    def add(self, model: str, prompt: int, cached: int, completion: int) -> None:
        t = self.by_model.setdefault(model, [0, 0, 0])
        t[0] += prompt
        t[1] += cached
        t[2] += completion

    def cost(self, prices: dict[str, CostFn]) -> float:
        return sum(prices[m](p, comp, None, cached=c) for m, (p, c, comp) in self.by_model.items())

    def cached_share(self) -> float:
        prompt = sum(t[0] for t in self.by_model.values())
        return sum(t[1] for t in self.by_model.values()) / prompt if prompt else 0.0


class CacheReset:
    """Empties the endpoints' prefix caches before each request (vLLM dev mode's
    POST /reset_prefix_cache), so a request's cache hits are its own re-sends."""

    def __init__(self, roots: list[str], enabled: bool):
        self.roots = roots
        self.enabled = enabled
        self.refused = ""

    async def __call__(self, client: httpx.AsyncClient) -> None:
        if not self.enabled or self.refused:
            return
        for root in self.roots:
            try:
                r = await client.post(f"{root}/reset_prefix_cache", timeout=10)
                ok = r.status_code == 200
            except httpx.HTTPError:
                ok = False
            if not ok:
                self.refused = root
                return


def body(prompt: str, a: argparse.Namespace) -> dict[str, Any]:
    return {
        "model": "ead",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": a.max_tokens,
        "temperature": a.temperature,
        "seed": 0,
    }


async def run_threshold(
    threshold: float,
    prompts: list[str],
    a: argparse.Namespace,
    pools: dict[str, Backend],
    prices: dict[str, Any],
    ctx: Ctx,
) -> dict[str, Any]:
    route = EadRoute(
        kind="ead",
        small=SMALL,
        large=LARGE,
        threshold=1e30 if math.isinf(threshold) else threshold,
        window=a.window,
        span=a.span,
        chunk=a.chunk,
        top_k=a.top_k,
    )
    ead = EadCascade("ead", route, prices, a.timeout, 0, default_max_tokens=a.max_tokens)
    tokens = {SMALL: 0, LARGE: 0}
    switches, cost, wall_ms, in_run = 0, 0.0, 0.0, []
    counted = Tokens()
    for prompt in prompts:
        await ctx.reset(ctx.client)
        t0 = time.perf_counter()
        result = await ead.complete("chat", body(prompt, a), pools)
        wall_ms += (time.perf_counter() - t0) * 1000
        for step in result.steps:
            u = step.usage
            counted.add(step.model, u.prompt_tokens, u.cached_tokens, u.completion_tokens)
        d = result.detail
        for m, n in d["tokens"].items():
            tokens[m] += n
        switches += d["switches"]
        cost += d["cost_usd"]
        in_run.extend(d["switch_latency_ms"])
    answered = tokens[SMALL] + tokens[LARGE]
    return {
        "threshold": threshold,
        "large_share": tokens[LARGE] / answered if answered else 0.0,
        "switches": switches,
        "tokens": answered,
        "wall_ms": wall_ms,
        "cost_usd": cost,
        "in_run_ms_per_switch": sum(in_run) / len(in_run) if in_run else None,
        "costs": {k: counted.cost(ctx.tables[k]) for k in PRICINGS},
        "cached_share": counted.cached_share(),
    }


async def fastest(
    threshold: float,
    prompts: list[str],
    a: argparse.Namespace,
    pools: dict[str, Backend],
    prices: dict[str, Any],
    ctx: Ctx,
) -> dict[str, Any]:
    """The least disturbed of `--repeat` runs: on a shared machine, other work only adds time.
    At temperature 0 the answers, and so shares and costs, are the same each run."""
    runs = [await run_threshold(threshold, prompts, a, pools, prices, ctx) for _ in range(a.repeat)]
    return min(runs, key=lambda r: r["wall_ms"])


async def large_alone(
    prompts: list[str],
    a: argparse.Namespace,
    pools: dict[str, Backend],
    prices: dict[str, Any],
    ctx: Ctx,
) -> dict[str, Any]:
    cost, wall_ms = 0.0, 0.0
    counted = Tokens()
    for prompt in prompts:
        await ctx.reset(ctx.client)
        t0 = time.perf_counter()
        done = await pools[LARGE].complete(UpstreamCall("chat", body(prompt, a), a.timeout, 0))
        wall_ms += (time.perf_counter() - t0) * 1000
        u = done.usage
        cost += prices[LARGE](u.prompt_tokens, u.completion_tokens, None)
        counted.add(LARGE, u.prompt_tokens, u.cached_tokens, u.completion_tokens)
    return {
        "cost_usd": cost,
        "wall_ms": wall_ms,
        "costs": {k: counted.cost(ctx.tables[k]) for k in PRICINGS},
        "cached_share": counted.cached_share(),
    }


class Ctx:
    """What every request of the run shares: the price tables per cached-token pricing, the
    cache reset and the client it posts with."""

    __slots__ = ("client", "reset", "tables")

    def __init__(self, a: argparse.Namespace, client: httpx.AsyncClient, reset: CacheReset):
        self.tables = {k: price_table(build_policy(a, k)) for k in PRICINGS}
        self.client = client
        self.reset = reset


async def main(a: argparse.Namespace) -> list[dict[str, Any]]:
    policy = build_policy(a)
    prices = price_table(policy)
    prompts = PROMPTS[: a.prompts]
    thresholds = [float(t) for t in a.thresholds.split(",")]
    roots = [u.rstrip("/").removesuffix("/v1") for u in (a.small, a.large)]
    # Started servers run in dev mode: their caches are emptied before each request.
    reset = CacheReset(roots, enabled=a.start_servers)
    async with new_upstream_client() as client:
        ctx = Ctx(a, client, reset)
        pools: dict[str, Backend] = {
            name: VllmPool(name, cfg, client)
            for name, cfg in policy.models.items()
            if isinstance(cfg, VllmModel)
        }
        await run_threshold(math.inf, prompts[:1], a, pools, prices, ctx)  # warm-up
        small_only = await fastest(math.inf, prompts, a, pools, prices, ctx)
        ms_per_token = small_only["wall_ms"] / max(small_only["tokens"], 1)
        runs = [await large_alone(prompts, a, pools, prices, ctx) for _ in range(a.repeat)]
        large = min(runs, key=lambda r: r["wall_ms"])
        rows = []
        for threshold in thresholds:
            row = (
                small_only
                if math.isinf(threshold)
                else await run_threshold(threshold, prompts, a, pools, prices, ctx)
            )
            added = (
                (row["wall_ms"] - ms_per_token * row["tokens"]) / row["switches"]
                if row["switches"]
                else None
            )
            rows.append(
                {
                    **row,
                    "added_ms_per_switch": added,
                    "cost_vs_large": row["cost_usd"] / large["cost_usd"],
                    # Both sides priced alike: EAD's cached tokens and the large model's own.
                    "cost_vs_large_cached": row["costs"]["list"] / large["costs"]["list"],
                    "cost_vs_large_cached_free": row["costs"]["free"] / large["costs"]["free"],
                }
            )
    show(rows, a, ms_per_token, large, len(prompts), reset)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(
            json.dumps(
                {
                    # "inf" as text: JSON has no infinity.
                    "rows": [{**r, "threshold": f"{r['threshold']:g}"} for r in rows],
                    "large_alone": large,
                    "small_ms_per_token": ms_per_token,
                    "caches_reset_per_request": reset.enabled and not reset.refused,
                    "block_size": a.block_size if a.start_servers else None,
                    "cached_price_per_1m": {
                        m: cfg.pricing.cached_input_per_1m
                        for m, cfg in policy.models.items()
                        if isinstance(cfg, VllmModel) and isinstance(cfg.pricing, TokenPricing)
                    },
                },
                indent=2,
            )
        )
    return rows


def show(
    rows: list[dict[str, Any]],
    a: argparse.Namespace,
    ms_per_token: float,
    large: dict[str, Any],
    n: int,
    reset: CacheReset,
) -> None:
    def ms(x: float | None) -> str:
        return "-" if x is None else f"{x:.1f}"

    table = Table(
        title=f"EAD {a.small_model} -> {a.large_model}: {n} prompts, "
        f"max_tokens {a.max_tokens}, window {a.window}, span {a.span}, "
        f"chunk {a.chunk}, top-{a.top_k}"
    )
    for col in (
        "threshold",
        "large share",
        "switches / req",
        "added ms / switch",
        "in-run ms / switch",
        "ms / req",
        "cost / large",
        "cached priced",
        "cached free",
        "cached / prompt",
    ):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            f"{r['threshold']:g}",
            f"{r['large_share']:.1%}",
            f"{r['switches'] / n:.2f}",
            ms(r["added_ms_per_switch"]),
            ms(r["in_run_ms_per_switch"]),
            f"{r['wall_ms'] / n:.0f}",
            f"{r['cost_vs_large']:.2f}x",
            f"{r['cost_vs_large_cached']:.2f}x",
            f"{r['cost_vs_large_cached_free']:.2f}x",
            f"{r['cached_share']:.1%}",
        )
    console = Console(width=150)
    console.print(table)
    console.print(
        f"small-only pace {ms_per_token:.2f} ms/token; large alone {large['wall_ms'] / n:.0f} "
        f"ms/req, ${large['cost_usd'] / n:.7f}/req "
        f"(cached priced ${large['costs']['list'] / n:.7f}, "
        f"{large['cached_share']:.1%} of its prompt tokens cached)"
    )
    console.print(
        "cost / large: every prompt token at the input price; cached priced: cached prompt "
        "tokens at the cached price (EAD and large alike); cached free: at none (GPU-hour)"
    )
    if not reset.enabled:
        console.print(
            "prefix caches not reset between requests: hits include earlier requests' prompts"
        )
    elif reset.refused:
        console.print(
            f"{reset.refused} refused POST /reset_prefix_cache (not in dev mode): "
            "hits include earlier requests' prompts"
        )
    else:
        console.print("prefix caches emptied before every request: hits are re-sends within it")


def start_tiny_servers(a: argparse.Namespace) -> list[Any]:
    """tiny-small and tiny-large on free ports, in dev mode (for the cache reset)."""
    from gateway.demo.tiny_models import build_tiny_models
    from gateway.demo.vllm_servers import VllmServer, free_port, launch

    folders = build_tiny_models(a.models_dir)
    servers = [
        VllmServer(
            name, folders[name], free_port(), a.log_dir / f"vllm-{name}.log",
            extra_env={"VLLM_SERVER_DEV_MODE": "1"},
            extra_args=["--block-size", str(a.block_size)] if a.block_size else [],
        )
        for name in ("tiny-small", "tiny-large")
    ]  # fmt: skip
    block = f"block size {a.block_size}" if a.block_size else "vLLM's default block size"
    print(f"starting tiny-small and tiny-large, {block} (logs in {a.log_dir}) ...", flush=True)
    launch(servers, timeout=300)
    a.small, a.small_model = servers[0].base_url, "tiny-small"
    a.large, a.large_model = servers[1].base_url, "tiny-large"
    return servers


def run(a: argparse.Namespace) -> int:
    from gateway.demo.vllm_servers import VllmServerError, stop_servers

    servers: list[Any] = []
    if a.start_servers:
        try:
            servers = start_tiny_servers(a)
        except VllmServerError as exc:
            print(f"ead_bench: {exc}", file=sys.stderr)
            return 1
    try:
        asyncio.run(main(a))
    finally:
        stop_servers(servers)
    return 0


if __name__ == "__main__":
    sys.exit(run(parse_args()))
