"""Judging routers on partial records, such as those from the request log (one model per
query): counterfactual replay, with no model called.

For a lambda each router picks argmax(q_hat - lambda x c_hat) per query (`replay.choose`, the
serving tie rule). Where the pick is a model the records observed for that query ("matched"),
its recorded quality and cost count; elsewhere nothing is known and the query is left out.
Two estimates of the router's quality come from the matched queries:
- replay: their plain mean (unbiased when the logged model was as if chosen at random);
- ips: self-normalised inverse propensity, each matched query weighted by 1 / the share of
  the log its model answered, so a router that agrees with the logging policy only on its
  favourite model is not flattered by it.
Both are only as good as the matched count, which is reported with them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from routers.offline.evaluate import knows, predictions
from routers.offline.replay import choose
from routers.predictors import artifact
from routers.predictors.base import Queries
from routers.records import RecordTable


@dataclass(frozen=True, slots=True)
class LoggedPoint:
    """One router at one lambda, on partial records."""

    lam: float
    n: int  # queries judged
    matched: int  # queries whose pick was observed
    quality: float | None  # replay estimate (mean over matched)
    quality_ips: float | None  # self-normalised inverse propensity estimate
    cost: float | None  # mean recorded cost over matched
    shares: dict[str, float]  # the router's picks per model, over all n queries

    def json(self) -> dict[str, Any]:
        return {
            "lambda": self.lam,
            "n": self.n,
            "matched": self.matched,
            "quality": self.quality,
            "quality_ips": self.quality_ips,
            "cost": self.cost,
            "shares": self.shares,
        }


def propensity(table: RecordTable) -> np.ndarray:
    """[n_models] each model's share of the observed records (the logging policy's rate)."""
    seen = ~np.isnan(table.quality)
    return seen.sum(axis=0) / max(int(seen.sum()), 1)


def replay_logged(
    table: RecordTable, q_hat: np.ndarray, c_hat: np.ndarray, lambdas: list[float]
) -> list[LoggedPoint]:
    """The router's points (predictions [n, models] on `table.models`) at each lambda."""
    n = len(table)
    rows = np.arange(n)
    share = propensity(table)
    points: list[LoggedPoint] = []
    for lam in lambdas:
        pick = choose(q_hat, c_hat, float(lam)) if n else np.zeros(0, int)
        q, c = table.quality[rows, pick], table.cost[rows, pick]
        hit = ~np.isnan(q)
        matched = int(hit.sum())
        w = 1.0 / share[pick[hit]] if matched else np.zeros(0)
        counts = np.bincount(pick, minlength=len(table.models)) / max(n, 1)
        points.append(
            LoggedPoint(
                lam=float(lam),
                n=n,
                matched=matched,
                quality=float(q[hit].mean()) if matched else None,
                quality_ips=float((w * q[hit]).sum() / w.sum()) if matched else None,
                cost=float(c[hit].mean()) if matched else None,
                shares={m: float(counts[j]) for j, m in enumerate(table.models)},
            )
        )
    return points


def logged_models(table: RecordTable) -> dict[str, dict[str, float]]:
    """What the log itself says per model: its records, their mean quality and cost."""
    out: dict[str, dict[str, float]] = {}
    for j, m in enumerate(table.models):
        seen = ~np.isnan(table.quality[:, j])
        if seen.any():
            out[m] = {
                "records": int(seen.sum()),
                "quality": float(table.quality[seen, j].mean()),
                "cost": float(table.cost[seen, j].mean()),
            }
    return out


def evaluate_artifacts(
    table: RecordTable, directories: list[str], lambdas: list[float]
) -> dict[str, Any]:
    """Each saved artifact, as it is, on the queries none of them trained on (an artifact
    trained on the whole log would otherwise be judged on its own training queries)."""
    trained: set[str] = set()
    for d in directories:
        trained |= artifact.train_query_ids(d)
    keep = [i for i, q in enumerate(table.query_ids) if q not in trained]
    test = table.subset(keep)
    result: dict[str, Any] = {
        "queries": len(table),
        "trained_on": len(table) - len(test),
        "judged": len(test),
        "models": logged_models(test),
        "routers": {},
    }
    if not len(test):
        return result
    queries = Queries.from_table(test)
    for d in directories:
        predictor = artifact.load(d)
        name = Path(d).resolve().name
        known = [m for m in test.models if knows(predictor, m)]
        entry: dict[str, Any] = {"directory": str(d), "models_known": known}
        if known:
            q_hat, c_hat = predictions(predictor, queries, test.models)
            entry["points"] = [p.json() for p in replay_logged(test, q_hat, c_hat, lambdas)]
        result["routers"][name if name not in result["routers"] else str(d)] = entry
    return result
