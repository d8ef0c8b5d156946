"""A whole report: the rows of a time range, grouped, priced against the baseline, charted."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.accounting.log_store import safe_location
from gateway.report.baseline import Baselines
from gateway.report.charts import ChartData
from gateway.report.experiments import Experiments, feedback_scores
from gateway.report.load import iter_batches, read_feedback
from gateway.report.stats import GroupStats, escalated
from policies.schema import ExperimentRoute, Policy

GROUPINGS = ("key", "team", "route", "model", "api", "day", "hour", "arm")


def _group_key(by: str, row: dict[str, Any]) -> str:
    if by == "key":
        return row["api_key_id"] or "(no key)"
    if by == "team":
        return row["team"] or "(no team)"
    if by == "route":
        return row["route"] or "(model by name)"
    if by == "model":
        return row["model"] or "(none)"
    if by == "api":  # rows written before the column existed: the endpoint kind was the API
        return row.get("api") or row["endpoint_kind"]
    if by == "arm":
        note = row["extra"].get("experiment")
        return f"{note.get('name')}={note.get('arm')}" if isinstance(note, dict) else "(none)"
    moment = datetime.fromtimestamp(row["ts"], UTC)
    return moment.strftime("%Y-%m-%d" if by == "day" else "%Y-%m-%d %H:00")


@dataclass
class Report:
    by: str
    log: str
    policy: str
    since: float | None
    until: float | None
    baseline_model: str | None  # --baseline, or None: each route's dearest model
    baselines: dict[str, str]  # route -> its baseline model
    groups: dict[str, dict[str, Any]]
    total: dict[str, Any]
    first_ts: float | None = None
    last_ts: float | None = None
    charts: dict[str, Any] = field(default_factory=dict)
    # --by arm: per experiment, its arms' figures and tests (gateway/report/experiments.py)
    experiments: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        extra = {} if self.experiments is None else {"experiments": self.experiments}
        return {
            "log": self.log,
            "policy": self.policy,
            "by": self.by,
            "since": self.since,
            "until": self.until,
            "first_ts": self.first_ts,
            "last_ts": self.last_ts,
            "baseline": self.baseline_model or "dearest model of each route",
            "baselines": self.baselines,
            "total": self.total,
            "groups": [{self.by: key, **figures} for key, figures in self.groups.items()],
            **extra,
        }


def build_report(
    log: str | Path,
    policy: Policy,
    policy_source: str,
    *,
    by: str = "route",
    since: float | None = None,
    until: float | None = None,
    baseline: str | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> Report:
    """One pass over the log. `on_batch(n)` is told of every n rows read (progress bars)."""
    if by not in GROUPINGS:
        raise ValueError(f"--by {by!r}: use one of {', '.join(GROUPINGS)}")
    baselines = Baselines(policy, baseline)
    groups: dict[str, GroupStats] = defaultdict(GroupStats)
    total = GroupStats()
    charts = ChartData(policy)
    first_ts = last_ts = None
    experiments = _experiments(log, policy) if by == "arm" else None
    for batch in iter_batches(log, since, until):
        for row in batch:
            base_cost = baselines.cost(row)
            quality = baselines.quality(row)
            groups[_group_key(by, row)].add(row, base_cost, quality)
            total.add(row, base_cost, quality)
            charts.add(row, base_cost)
            if experiments is not None:
                experiments.add(row, escalated(row["extra"]))
        first_ts = batch[0]["ts"] if first_ts is None else first_ts
        last_ts = batch[-1]["ts"]
        if on_batch is not None:
            on_batch(len(batch))
    return Report(
        by=by,
        log=safe_location(log),  # a URL's password left out
        policy=policy_source,
        since=since,
        until=until,
        baseline_model=baseline,
        baselines=dict(baselines.by_route),
        groups={key: groups[key].summary() for key in sorted(groups)},
        total=total.summary(),
        first_ts=first_ts,
        last_ts=last_ts,
        charts=charts.series(),
        experiments=experiments.summary() if experiments is not None else None,
    )


def _experiments(log: str | Path, policy: Policy) -> Experiments:
    """Feedback read up front (one score per request); the policy's arm order, where the
    experiment is still in it, makes its first arm the control."""
    order = {
        name: list(route.arms)
        for name, route in policy.routes.items()
        if isinstance(route, ExperimentRoute)
    }
    return Experiments(feedback_scores(read_feedback(log)), order)
