"""Does the online layer learn from live traffic? Real routing records replayed as a stream,
each request's recorded quality for the chosen model given back as its feedback.

    python -m bench.online_learning                 # every scenario, 3 task folds
    python -m bench.online_learning --requests 5000 --json var/online.json

The offline router is the shipped recipe (complexity, static encoder, with the guard), trained
here on part of ../shared/data/llmrouter_train.jsonl; the online layer is the gateway's own
arithmetic (routers/serving/online.py: `Corrections`, `choose`), the pacing multiplier the
gateway's controller step (gateway/admission/pacing_controller.py: `next_state`).

1. Unseen traffic: trained with whole tasks held out (routers.records.split_by_task: every
   task is held out once over the folds), then a stream of requests drawn from the held-out
   tasks only. Quality at equal spend: the online run's spend, and the offline router's and the
   oracle's quality at that spend (interpolated on their lambda curves). Also: requests until
   the online run's rolling quality is within 2 points of its final quality.
2. A model that degrades: trained on 70 % of the queries of every task, a stream of the other
   30 %; halfway through, the model the online layer sends most traffic to loses 30 points of
   quality. Its share before and after, and requests until its rolling share has halved.
3. Budget: both streams again, spread over one simulated day under a budget a third of what
   always asking the strongest model would cost, paced (the multiplier of lambda) and capped
   (a request goes to the best model that still fits, or is refused).
4. Cost of learning: the online choice's added time per request, and learning updates per
   second on one core on the in-process store and on a real redis-server.

Targets (issue 15): on unseen traffic offline + online ends at least 5 points above offline
only at equal spend; the degraded model's share halves within 500 requests; no budget overrun.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from gateway.admission.pacing_controller import next_state
from gateway.state import MemoryState, PacingState, RedisState, State
from policies.schema import OnlineConfig, PacingConfig
from routers.predictors import artifact, contexts, embedding
from routers.predictors.base import Queries
from routers.records import RecordTable, split_by_query, split_by_task
from routers.serving.learned import serve_single_threaded
from routers.serving.objective import rank_models
from routers.serving.online import Corrections, choose

DATA = Path(__file__).resolve().parents[1].parent / "shared/data/llmrouter_train.jsonl"
DAY_S = 86400.0
T0 = 1_800_000_000.0 - (1_800_000_000.0 % DAY_S)  # a midnight, UTC
console = Console(highlight=False)


@dataclass(slots=True)
class Stream:
    """A replayed stream: per request, the offline predictions, context, true quality, cost."""

    predicted: np.ndarray  # [n, models]
    context: np.ndarray  # [n]
    quality: np.ndarray  # [n, models]
    cost: np.ndarray  # [n, models]
    models: list[str]


@dataclass(slots=True)
class Run:
    quality: float  # mean quality of the answers given (refused requests count 0)
    spend: float
    choices: np.ndarray  # model index per request (-1: refused)
    per_request: np.ndarray  # quality per request
    explored: int = 0
    max_spend: float = 0.0
    refused: int = 0


def make_stream(
    train: RecordTable, test: RecordTable, n: int, seed: int, k: int = contexts.DEFAULT_CONTEXTS
) -> Stream:
    predictor = artifact.train("complexity", train, seed=seed)
    encoder = embedding.encoder_of(predictor.params)
    fitted = contexts.fit(Queries.from_table(train), encoder, k=k, seed=seed)
    queries = Queries.from_table(test)
    predicted = np.asarray(predictor.predict_quality(queries, list(test.models)), dtype=float)
    ctx = fitted.of_queries(queries)
    rows = np.random.default_rng(seed).integers(0, len(test), size=n)
    return Stream(
        predicted[rows], ctx[rows], test.quality[rows], test.cost[rows], list(test.models)
    )


def offline_run(s: Stream, lam: float) -> Run:
    score = s.predicted - lam * s.cost
    choice = score.argmax(axis=1)
    return _summary(s, choice)


def oracle_run(s: Stream, lam: float) -> Run:
    choice = (s.quality - lam * s.cost).argmax(axis=1)
    return _summary(s, choice)


def _summary(s: Stream, choice: np.ndarray) -> Run:
    idx = np.arange(len(choice))
    q = s.quality[idx, choice]
    return Run(float(q.mean()), float(s.cost[idx, choice].sum()), choice, q)


def online_run(
    s: Stream,
    lam: float,
    config: OnlineConfig,
    seed: int,
    degrade: tuple[int, int] | None = None,  # (from request, model index)
    budget: float | None = None,
    pacing: PacingConfig | None = None,
    learn: bool = True,
) -> Run:
    """The stream through `choose` and `observe`, optionally paced and capped by a budget."""
    rng = np.random.default_rng(seed)
    table = Corrections(config)
    n = len(s.context)
    choices = np.full(n, -1)
    got = np.zeros(n)
    spend, explored, refused = 0.0, 0, 0
    state, multiplier = PacingState(), 1.0
    for i in range(n):
        now = T0 + DAY_S * i / n
        if pacing is not None and (i == 0 or now - state.updated_at >= pacing.update_interval_s):
            state = next_state(pacing, state, spend, now)
            multiplier = state.price_multiplier
        quality = s.quality[i].copy()
        if degrade is not None and i >= degrade[0]:
            quality[degrade[1]] = max(0.0, quality[degrade[1]] - 0.3)
        offline = {
            m: {"quality": float(s.predicted[i, j]), "cost_usd": float(s.cost[i, j])}
            for j, m in enumerate(s.models)
        }
        context = int(s.context[i])
        if learn:
            pick = choose(table, context, offline, lam * multiplier, None, rng)
            order, explored = pick.models, explored + pick.explored
        else:
            order = rank_models(offline, lam * multiplier)
        if budget is not None:  # the hard cap: the best model that still fits
            order = [m for m in order if spend + offline[m]["cost_usd"] <= budget]
            if not order:
                refused += 1
                continue
        j = s.models.index(order[0])
        choices[i], got[i] = j, quality[j]
        spend += float(s.cost[i, j])
        if learn:
            table.observe(context, order[0], offline[order[0]]["quality"], got[i], now)
    return Run(float(got.mean()), spend, choices, got, explored, spend, refused)


def at_spend(curve: list[Run], spend: float) -> float:
    """Quality of a lambda curve at `spend`, interpolated (spend falls as lambda rises)."""
    points = sorted((r.spend, r.quality) for r in curve)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return float(np.interp(spend, xs, ys))


def rolling(x: np.ndarray, window: int) -> np.ndarray:
    c = np.cumsum(np.insert(x.astype(float), 0, 0.0))
    return (c[window:] - c[:-window]) / window


def lambdas(s: Stream) -> list[float]:
    spread = float(np.median(s.cost.max(axis=1) - s.cost.min(axis=1))) or 1e-6
    return [0.0, *np.geomspace(0.01 / spread, 100 / spread, 40)]


def unseen_traffic(n: int, folds: int, config: OnlineConfig) -> list[dict[str, Any]]:
    table = RecordTable.load(DATA)
    out = []
    for fold in range(folds):
        train, test = split_by_task(table, fold, 0.3)
        s = make_stream(train, test, n, fold)
        grid = lambdas(s)
        offline = [offline_run(s, lam) for lam in grid]
        oracle = [oracle_run(s, lam) for lam in grid]
        strongest = int(s.quality.mean(axis=0).argmax())
        for share in (0.3, 0.6):
            # The lambda at which the offline router spends this share of always-strongest.
            target = share * float(s.cost[:, strongest].sum())
            lam = min(grid, key=lambda x: abs(offline_run(s, x).spend - target))
            on = online_run(s, lam, config, fold)
            final = float(on.per_request[-n // 5 :].mean())
            roll = rolling(on.per_request, 250)
            reached = int(np.argmax(roll >= final - 0.02)) + 250
            out.append(
                {
                    "fold": fold,
                    "held_out_tasks": sorted(set(test.tasks)),
                    "spend_share": share,
                    "lambda": lam,
                    "spend": on.spend,
                    "online": on.quality,
                    "offline": at_spend(offline, on.spend),
                    "oracle": at_spend(oracle, on.spend),
                    "gain": on.quality - at_spend(offline, on.spend),
                    "requests_to_final": reached,
                    "explored": on.explored,
                }
            )
    return out


def degradation(n: int, config: OnlineConfig, seed: int = 0) -> dict[str, Any]:
    table = RecordTable.load(DATA)
    train, test = split_by_query(table, seed, 0.3)
    s = make_stream(train, test, n, seed)
    strongest = int(s.quality.mean(axis=0).argmax())
    target = 0.5 * float(s.cost[:, strongest].sum())
    grid = lambdas(s)
    lam = min(grid, key=lambda x: abs(offline_run(s, x).spend - target))
    half = n // 2
    warm = online_run(s, lam, config, seed)
    model = int(np.bincount(warm.choices[:half], minlength=len(s.models)).argmax())
    on = online_run(s, lam, config, seed, degrade=(half, model))
    off = online_run(s, lam, config, seed, degrade=(half, model), learn=False)
    chosen = (on.choices == model).astype(float)
    before = float(chosen[:half].mean())
    after = float(chosen[half:].mean())
    roll = rolling(chosen[half:], 100)
    halved = int(np.argmax(roll <= before / 2)) + 100 if (roll <= before / 2).any() else None
    return {
        "model": s.models[model],
        "lambda": lam,
        "share_before": before,
        "share_after": after,
        "requests_to_halve": halved,
        "quality_after_online": float(on.per_request[half:].mean()),
        "quality_after_offline": float(off.per_request[half:].mean()),
        "offline_share_after": float((off.choices[half:] == model).mean()),
    }


def budget_runs(n: int, config: OnlineConfig) -> list[dict[str, Any]]:
    table = RecordTable.load(DATA)
    cases = [
        ("unseen tasks", *split_by_task(table, 0, 0.3)),
        ("unseen queries", *split_by_query(table, 0, 0.3)),
    ]
    out = []
    for name, train, test in cases:
        s = make_stream(train, test, n, 0)
        strongest = int(s.quality.mean(axis=0).argmax())
        budget = float(s.cost[:, strongest].sum()) / 3
        pacing = PacingConfig(budget_usd=budget, period="day", update_interval_s=60.0)
        grid = lambdas(s)
        lam = min(grid, key=lambda x: abs(offline_run(s, x).spend - budget))
        for learn in (False, True):
            run = online_run(s, lam, config, 0, budget=budget, pacing=pacing, learn=learn)
            out.append(
                {
                    "stream": name,
                    "layer": "offline + online" if learn else "offline",
                    "budget": budget,
                    "spend": run.spend,
                    "spend_over_budget": run.spend / budget - 1,
                    "max_spend": run.max_spend,
                    "quality": run.quality,
                    "refused": run.refused,
                }
            )
    return out


def learning_cost(config: OnlineConfig, updates: int = 20_000) -> dict[str, Any]:
    serve_single_threaded()
    rng = np.random.default_rng(0)
    models = [f"m{j}" for j in range(6)]
    table = Corrections(config)
    for i in range(5000):
        table.observe(int(rng.integers(32)), models[i % 6], 0.5, float(rng.random()), T0)
    offline = {
        m: {"quality": float(rng.random()), "cost_usd": 1e-5 * (j + 1)}
        for j, m in enumerate(models)
    }
    reps = 20_000
    t = time.perf_counter()
    for _ in range(reps):
        rank_models(offline, 100.0)
    base = (time.perf_counter() - t) / reps
    t = time.perf_counter()
    for i in range(reps):
        choose(table, i % 32, offline, 100.0, None, rng)
    online = (time.perf_counter() - t) / reps
    out: dict[str, Any] = {
        "rank_models_us": base * 1e6,
        "online_choose_us": online * 1e6,
        "added_us": (online - base) * 1e6,
    }
    out["memory_updates_per_s"] = asyncio.run(_updates(MemoryState(), updates, config))
    redis = shutil.which("redis-server")
    if redis is None:
        out["redis_updates_per_s"] = None
        return out
    with tempfile.TemporaryDirectory() as tmp:
        port = _free_port()
        proc = subprocess.Popen(
            [redis, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", tmp],
            stdout=subprocess.DEVNULL,
        )
        try:
            time.sleep(0.3)
            url = f"redis://127.0.0.1:{port}/0"
            out["redis_updates_per_s"] = asyncio.run(_redis_updates(url, updates, config))
        finally:
            proc.terminate()
            proc.wait()
    return out


async def _redis_updates(url: str, n: int, config: OnlineConfig) -> float:
    state = RedisState(url, prefix="bench")
    try:
        return await _updates(state, n, config)
    finally:
        await state.aclose()


async def _updates(state: State, n: int, config: OnlineConfig) -> float:
    """Learning updates a second (each is two cells, the context's and the model's, in one
    atomic step), 64 in
    flight as the feedback of concurrent requests would be."""
    sem = asyncio.Semaphore(64)

    async def one(i: int) -> None:
        async with sem:
            cells = [f"{i % 32}|m{i % 6}", f"*|m{i % 6}"]
            await state.stats_update("online:bench", cells, 0.1, config.discount, T0)

    t = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return n / (time.perf_counter() - t)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    config = OnlineConfig()
    results: dict[str, Any] = {"config": config.model_dump()}

    results["unseen"] = rows = unseen_traffic(args.requests, args.folds, config)
    t = Table(title=f"Unseen tasks: {args.requests} requests each, quality at equal spend")
    for col in (
        "fold",
        "held-out tasks",
        "spend (share)",
        "offline",
        "offline + online",
        "oracle",
        "gain",
        "to within 2 pts",
    ):
        t.add_column(col)
    for r in rows:
        t.add_row(
            str(r["fold"]), ", ".join(r["held_out_tasks"]), f"{r['spend_share']:.0%}",
            f"{r['offline']:.3f}", f"{r['online']:.3f}", f"{r['oracle']:.3f}",
            f"{r['gain']:+.3f}", str(r["requests_to_final"]),
        )  # fmt: skip
    console.print(t)
    gains = [r["gain"] for r in rows]
    console.print(f"mean gain {np.mean(gains):+.3f}, smallest {min(gains):+.3f} (target: +0.050)")

    results["degradation"] = d = degradation(args.requests, config)
    console.print(
        f"\nDegradation: {d['model']} loses 30 points at request {args.requests // 2}: share "
        f"{d['share_before']:.1%} -> {d['share_after']:.1%} (offline only: "
        f"{d['offline_share_after']:.1%}); halved after {d['requests_to_halve']} requests "
        f"(target <= 500); quality after: online {d['quality_after_online']:.3f}, offline "
        f"{d['quality_after_offline']:.3f}"
    )

    results["budget"] = b = budget_runs(args.requests, config)
    t = Table(title="Under a budget a third of always-strongest (paced over a simulated day)")
    for col in ("stream", "layer", "budget $", "spend $", "vs budget", "quality", "refused"):
        t.add_column(col)
    for r in b:
        t.add_row(
            r["stream"], r["layer"], f"{r['budget']:.4f}", f"{r['spend']:.4f}",
            f"{r['spend_over_budget']:+.2%}", f"{r['quality']:.3f}", str(r["refused"]),
        )  # fmt: skip
    console.print(t)

    results["cost"] = c = learning_cost(config)
    redis_rate = c["redis_updates_per_s"]
    console.print(
        f"\nCost of learning: choose {c['online_choose_us']:.1f} µs vs rank "
        f"{c['rank_models_us']:.1f} µs "
        f"(+{c['added_us']:.1f} µs a request); updates/s: memory {c['memory_updates_per_s']:,.0f}, "
        f"redis {'n/a' if redis_rate is None else f'{redis_rate:,.0f}'}"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=float))


if __name__ == "__main__":
    main()
