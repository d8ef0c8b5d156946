"""The HTML report's chart series, gathered in the same pass as the figures."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from datetime import UTC, datetime
from typing import Any

from gateway.admission.pacing_controller import planned_fraction
from gateway.admission.periods import period_bounds
from gateway.report.stats import ExactSum
from policies.schema import PacingConfig, Policy

HOUR_S = 3600
DAY_S = 86400
# Up to two days of spend is drawn per hour; a longer span per day.
HOURLY_SPAN_S = 2 * DAY_S
PACING_POINTS = 48


def _label(ts: float, fmt: str) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime(fmt)


class ChartData:
    def __init__(self, policy: Policy):
        self._spend: dict[int, dict[str, ExactSum]] = defaultdict(lambda: defaultdict(ExactSum))
        self._mix: dict[str, Counter[str]] = defaultdict(Counter)
        self._paced: dict[str, PacingConfig] = {
            name: route.pacing for name, route in policy.routes.items() if route.pacing is not None
        }
        self._paced_rows: dict[str, list[tuple[float, float]]] = defaultdict(list)
        self._savings: dict[str, tuple[ExactSum, ExactSum]] = {}
        self._last_ts: float | None = None

    def add(self, row: dict[str, Any], baseline_cost: float) -> None:
        ts, cost = row["ts"], row["cost_usd"] or 0.0
        self._last_ts = ts if self._last_ts is None else max(self._last_ts, ts)
        hour = int(ts // HOUR_S) * HOUR_S
        model = row["model"] or "(none)"
        # A cascade's cost belongs to every model it asked, not only the one that answered.
        steps = row["extra"].get("steps")
        rest = cost
        if isinstance(steps, list):
            step_costs = [s["cost_usd"] for s in steps if isinstance(s, dict) and s.get("cost_usd")]
            for step in steps:
                if isinstance(step, dict) and step.get("cost_usd"):
                    self._spend[hour][str(step.get("model") or model)].add(step["cost_usd"])
            rest = cost - math.fsum(step_costs)
        if rest:
            self._spend[hour][model].add(rest)
        route = row["route"] or "(model by name)"
        self._mix[route][model] += 1
        actual, baseline = self._savings.setdefault(route, (ExactSum(), ExactSum()))
        actual.add(cost)
        baseline.add(baseline_cost)
        if row["route"] in self._paced:
            self._paced_rows[row["route"]].append((ts, cost))

    def _spend_over_time(self) -> dict[str, Any]:
        if not self._spend:
            return {"labels": [], "datasets": [], "bucket": "hour"}
        hours = sorted(self._spend)
        daily = hours[-1] - hours[0] >= HOURLY_SPAN_S
        step, fmt = (DAY_S, "%Y-%m-%d") if daily else (HOUR_S, "%Y-%m-%d %H:00")
        buckets: dict[int, dict[str, ExactSum]] = defaultdict(lambda: defaultdict(ExactSum))
        for hour in hours:
            for model, total in self._spend[hour].items():
                buckets[hour // step * step][model].add(total.value())
        # Every bucket between the first and the last, so gaps show as gaps.
        keys = list(range(min(buckets), max(buckets) + step, step))
        models = sorted({m for b in buckets.values() for m in b})
        datasets = [
            {
                "label": m,
                "data": [buckets[k][m].value() if m in buckets.get(k, {}) else 0.0 for k in keys],
            }
            for m in models
        ]
        return {
            "labels": [_label(k, fmt) for k in keys],
            "datasets": datasets,
            "bucket": "day" if daily else "hour",
        }

    def _routing_mix(self) -> dict[str, Any]:
        routes = sorted(self._mix)
        models = sorted({m for c in self._mix.values() for m in c})
        return {
            "labels": routes,
            "datasets": [{"label": m, "data": [self._mix[r][m] for r in routes]} for m in models],
        }

    def _pacing(self) -> list[dict[str, Any]]:
        """Per paced route: the cumulative spend against budget x planned fraction, over the
        period window that holds the report's last request."""
        if self._last_ts is None:
            return []
        out = []
        for route, config in sorted(self._paced.items()):
            start, end = (d.timestamp() for d in period_bounds(config.period, self._last_ts))
            fmt = "%H:%M" if config.period == "day" else "%m-%d %H:%M"
            rows = sorted(r for r in self._paced_rows.get(route, []) if start <= r[0] < end)
            points = [start + (end - start) * i / PACING_POINTS for i in range(PACING_POINTS + 1)]
            actual: list[float | None] = []
            spent, i = ExactSum(), 0
            for t in points:
                while i < len(rows) and rows[i][0] <= t:
                    spent.add(rows[i][1])
                    i += 1
                # Past the last request the future is unknown: the line stops there.
                actual.append(spent.value() if t <= self._last_ts else None)
            out.append(
                {
                    "route": route,
                    "period": config.period,
                    "budget_usd": config.budget_usd,
                    "window_start": _label(start, "%Y-%m-%d %H:%M UTC"),
                    "labels": [_label(t, fmt) for t in points],
                    # The window's own end reads as the next window's start: stay just inside.
                    "plan_usd": [
                        config.budget_usd * planned_fraction(config, min(t, end - 1e-3))
                        for t in points
                    ],
                    "actual_usd": actual,
                    "spent_usd": math.fsum(cost for _, cost in rows),
                }
            )
        return out

    def _savings_chart(self) -> dict[str, Any]:
        routes = sorted(self._savings)
        return {
            "labels": routes,
            "actual_usd": [self._savings[r][0].value() for r in routes],
            "baseline_usd": [self._savings[r][1].value() for r in routes],
        }

    def series(self) -> dict[str, Any]:
        return {
            "spend_over_time": self._spend_over_time(),
            "routing_mix": self._routing_mix(),
            "pacing": self._pacing(),
            "savings": self._savings_chart(),
        }
