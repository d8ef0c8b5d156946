"""What the dashboard shows, gathered from the request log and the state store.

Request-log reads are read-only queries over a recent window (SQLite or Postgres, through
gateway.accounting.log_store), run in a thread so the event loop keeps serving; each poll is a
few indexed range scans, not a full-table read.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from gateway.accounting.log_store import open_reader
from gateway.admission.access import Budget, key_budget, route_budget
from gateway.admission.pacing_controller import planned_fraction
from gateway.admission.price_multiplier import Pacers
from gateway.percentiles import percentile
from gateway.runtime import Runtime
from gateway.state import State
from policies.schema import PacingConfig

WINDOWS_S = {"15m": 900, "1h": 3600, "24h": 86400, "7d": 604800}
DEFAULT_WINDOW = "1h"
TIMELINE_BUCKETS = 60
# Latency percentiles come from at most this many of the window's newest rows.
LATENCY_SAMPLE = 50_000
# Several open tabs share one read of the log per window this often (each polls every 3 s).
STATS_TTL_S = 2.0
_recent: dict[tuple[str, float], tuple[float, dict[str, Any]]] = {}


def request_stats(log: str | Path, window_s: float, now: float) -> dict[str, Any]:
    """Counts, spend, cache hits, latency percentiles and a timeline over the last `window_s`."""
    since = now - window_s
    bucket_s = window_s / TIMELINE_BUCKETS
    out: dict[str, Any] = {
        "window_s": window_s,
        "since": since,
        "requests": 0,
        "errors": 0,
        "spend_usd": 0.0,
        "cache_hits": 0,
        "latency_p50_ms": None,
        "latency_p95_ms": None,
        "models": [],
        "apis": [],  # by the API the client called (chat, completions, messages, ...)
        "replicas": [],  # by the gateway replica that served it (serve --replica)
        "timeline": {
            "bucket_s": bucket_s,
            "start": since,
            "requests": [0] * TIMELINE_BUCKETS,
            "spend_usd": [0.0] * TIMELINE_BUCKETS,
        },
    }
    traffic = open_reader(log).traffic(since, bucket_s, LATENCY_SAMPLE)
    latencies: dict[str, list[float]] = {}
    replica_latencies: dict[str, list[float]] = {}
    for model, replica, latency in traffic.latencies:
        latencies.setdefault(model, []).append(latency)
        replica_latencies.setdefault(replica, []).append(latency)

    per_model: dict[str, dict[str, Any]] = {}
    per_api: dict[str, dict[str, Any]] = {}
    per_replica: dict[str, dict[str, Any]] = {}
    timeline = out["timeline"]
    for model, bucket, count, errors, cost, hits, api, replica in traffic.cells:
        r = per_replica.setdefault(
            replica, {"replica": replica, "requests": 0, "errors": 0, "spend_usd": 0.0}
        )
        r["requests"] += count
        r["errors"] += errors or 0
        r["spend_usd"] += cost or 0.0
        a = per_api.setdefault(api, {"api": api, "requests": 0, "errors": 0, "spend_usd": 0.0})
        a["requests"] += count
        a["errors"] += errors or 0
        a["spend_usd"] += cost or 0.0
        m = per_model.setdefault(
            model,
            {"model": model, "requests": 0, "errors": 0, "spend_usd": 0.0, "cache_hits": 0},
        )
        m["requests"] += count
        m["errors"] += errors or 0
        m["spend_usd"] += cost or 0.0
        m["cache_hits"] += hits or 0
        i = min(max(int(bucket), 0), TIMELINE_BUCKETS - 1)
        timeline["requests"][i] += count
        timeline["spend_usd"][i] += cost or 0.0

    everything: list[float] = []
    for m in sorted(per_model.values(), key=lambda m: (-m["requests"], m["model"])):
        lat = latencies.get(m["model"], [])
        everything.extend(lat)
        m["latency_p50_ms"] = percentile(lat, 50)
        m["latency_p95_ms"] = percentile(lat, 95)
        out["models"].append(m)
        for field in ("requests", "errors", "spend_usd", "cache_hits"):
            out[field] += m[field]
    out["apis"] = sorted(per_api.values(), key=lambda a: (-a["requests"], a["api"]))
    for r in sorted(per_replica.values(), key=lambda r: r["replica"]):
        lat = replica_latencies.get(r["replica"], [])
        r["latency_p50_ms"] = percentile(lat, 50)
        r["latency_p95_ms"] = percentile(lat, 95)
        out["replicas"].append(r)
    out["latency_p50_ms"] = percentile(everything, 50)
    out["latency_p95_ms"] = percentile(everything, 95)
    return out


async def _budget_row(
    state: State, kind: str, name: str, budget: Budget, pacing: PacingConfig | None,
    controller: str, now: float,
) -> dict[str, Any]:  # fmt: skip
    """`controller`: the pacing state's name, as gateway/admission/price_multiplier.py gives it.
    `pacing`: with its plan as the controller runs it this window (`Pacers.plan_for`)."""
    spent, reserved = await state.budget_usage(budget.name, now)
    row: dict[str, Any] = {
        "kind": kind,
        "name": name,
        "budget_usd": budget.limit_usd,
        "period": budget.period,
        "spent_usd": spent,
        "reserved_usd": reserved,
        "spent_fraction": spent / budget.limit_usd if budget.limit_usd else None,
        "planned_fraction": None,
        "price_multiplier": None,
    }
    if pacing is not None:
        row["planned_fraction"] = planned_fraction(pacing, now)
        stored = await state.pacing_get(controller)
        row["price_multiplier"] = stored.price_multiplier if stored is not None else 1.0
    return row


async def budgets(
    state: State, pacers: Pacers, runtime: Runtime, now: float
) -> list[dict[str, Any]]:
    """Paced routes, then keys with a budget: spend read from the same counters access uses,
    and the plan the pacing controller follows (a learned plan as learned, not uniform)."""
    rows = []
    for name, route in runtime.policy.routes.items():
        if route.pacing is not None:
            budget = route_budget(name, route.pacing, now)
            pacing = await pacers.plan_for(route.pacing, "route", name, now)
            rows.append(
                await _budget_row(state, "route", name, budget, pacing, f"route:{name}", now)
            )
    for key in sorted(await state.list_keys(), key=lambda k: k.created_at):
        budget = key_budget(key, now)
        if budget is None or not key.active:
            continue
        pacing = PacingConfig.model_validate(key.pacing) if key.pacing else None
        if pacing is not None:
            pacing = await pacers.plan_for(pacing, "key", key.id, now)
        label = f"{key.id} ({key.name or key.team})"
        rows.append(await _budget_row(state, "key", label, budget, pacing, f"key:{key.id}", now))
    return rows


def endpoints(runtime: Runtime) -> list[dict[str, Any]]:
    """Each vLLM endpoint: usable or not, this process's outstanding calls, and its load as its
    own /metrics last said (None where unknown: no vLLM /metrics, or not read yet)."""
    return [
        {
            "model": model,
            "endpoint": r.endpoint,
            "usable": r.usable,
            "outstanding": r.outstanding,
            "metrics": r.status,
            "running": r.engine.running,
            "waiting": r.engine.waiting,
            "kv_cache_usage": r.engine.kv_usage,
            "prefix_cache_hit_rate": r.engine.prefix_hit_rate,
            "read_at": r.engine.read_at,
        }
        for model, r in runtime.endpoint_reports()
    ]


def policy_info(runtime: Runtime, last_error: Exception | None) -> dict[str, Any]:
    return {
        "version": runtime.version,
        "loaded_at": runtime.loaded_at,
        "source": runtime.source,
        "models": list(runtime.policy.models),
        "routes": {name: list(route.models) for name, route in runtime.policy.routes.items()},
        "healthy_models": runtime.healthy_models(),
        "last_reload_error": str(last_error) if last_error else None,
    }


async def snapshot(
    log: str | Path,
    state: State,
    pacers: Pacers,
    runtime: Runtime,
    last_error: Exception | None,
    window: str,
) -> dict[str, Any]:
    """`log`: the request log's SQLite path or Postgres URL."""
    now = time.time()
    window_s = WINDOWS_S.get(window, WINDOWS_S[DEFAULT_WINDOW])
    cached = _recent.get((str(log), window_s))
    if cached is not None and 0 <= now - cached[0] < STATS_TTL_S:
        stats = cached[1]
    else:
        stats = await asyncio.to_thread(request_stats, log, window_s, now)
        _recent[(str(log), window_s)] = (now, stats)
    return {
        "now": now,
        "window": window if window in WINDOWS_S else DEFAULT_WINDOW,
        "traffic": stats,
        "budgets": await budgets(state, pacers, runtime, now),
        "endpoints": endpoints(runtime),
        "policy": policy_info(runtime, last_error),
    }
