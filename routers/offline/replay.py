"""Replaying the shared objective over routing records: operating-point curves and their metrics.

For a lambda, each query goes to argmax(q_hat - lambda x c_hat) (ties to the cheaper model, as
`routers.serving.objective.rank_models`); the mean realised quality and cost of the chosen
models' records is one operating point. Metrics, on the queries replayed:
- AIQ: area under the router's non-decreasing upper concave hull of (cost, quality) points
  (mixing two operating points at random reaches any point between them, as RouterBench's
  non-decreasing convex hull), integrated over [cheapest, dearest single-model cost] and
  divided by that range. Below a router's cheapest operating point it counts quality 0, so a
  single point is a step.
- quality at the strongest model's cost (strongest = best mean quality on the test split);
- cost to reach 95% of the strongest model's quality ($ and % of the strongest's cost);
- call shares per model at the operating point reaching 95% at the lowest cost (else the point
  whose cost is nearest the strongest's).
Baselines need no predictor: oracle, random at matched cost (the chord between the cheapest and
the strongest model), always-cheapest, always-strongest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from routers.predictors.base import Predictor, Queries
from routers.records import RecordTable

TARGET = 0.95  # share of the strongest model's quality the "cost to reach" metric asks for
ORACLE, RANDOM, CHEAPEST, STRONGEST = "oracle", "random", "always-cheapest", "always-strongest"
BASELINES = (ORACLE, RANDOM, CHEAPEST, STRONGEST)


# --- replay ---------------------------------------------------------------------------------


def choose(q_hat: np.ndarray, c_hat: np.ndarray, lam: float) -> np.ndarray:
    """[n] column chosen per query: argmax(q_hat - lam x c_hat), ties to the cheaper predicted
    cost, then to the first column (the tie rule of `rank_models`)."""
    score = q_hat - lam * c_hat
    best = score.max(axis=1, keepdims=True)
    return np.argmin(np.where(score == best, c_hat, np.inf), axis=1)


def breakpoints(q_hat: np.ndarray, c_hat: np.ndarray) -> np.ndarray:
    """Every lambda at which some query's choice between two models can flip."""
    out = []
    m = q_hat.shape[1]
    for a in range(m):
        for b in range(a + 1, m):
            dq, dc = q_hat[:, a] - q_hat[:, b], c_hat[:, a] - c_hat[:, b]
            with np.errstate(divide="ignore", invalid="ignore"):
                lam = dq / dc
            out.append(lam[(dq * dc > 0) & np.isfinite(lam)])
    return np.concatenate(out) if out else np.zeros(0)


# The route's `lead` settings replayed at lambda 0 beyond the lambda grid: points added to the
# model best on average, up to 1, where every query goes to it (qualities are in 0..1).
LEADS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def lambda_grid(q_hat: np.ndarray, c_hat: np.ndarray, n: int = 100) -> np.ndarray:
    """0, then n log-spaced values and n quantiles of the predictions' own breakpoints (so the
    grid is in the data's quality-per-dollar scale and dense where choices flip), then one value
    above them all, where every query goes to its cheapest predicted model."""
    b = breakpoints(q_hat, c_hat)
    b = b[b > 0]
    if len(b) == 0:
        return np.zeros(1)
    grid = np.concatenate(
        [[0.0], np.geomspace(b.min(), b.max(), n), np.quantile(b, np.linspace(0, 1, n))]
    )
    return np.unique(np.append(grid, b.max() * 1.01))


@dataclass(slots=True)
class Curve:
    """Operating points of one router on one test split, in lambda order."""

    lambdas: np.ndarray  # [L]
    cost: np.ndarray  # [L] mean realised cost per query
    quality: np.ndarray  # [L] mean realised quality
    shares: np.ndarray  # [L, n_models] share of calls per model
    leads: np.ndarray | None = None  # [L] the route's lead at each point; None: 0 throughout

    def lead_at(self, i: int) -> float:
        return 0.0 if self.leads is None else float(self.leads[i])

    def to_json(self, models: list[str]) -> dict[str, Any]:
        out = {
            "lambda": self.lambdas.tolist(),
            "cost": self.cost.tolist(),
            "quality": self.quality.tolist(),
            "shares": {m: self.shares[:, j].tolist() for j, m in enumerate(models)},
        }
        if self.leads is not None:
            out["lead"] = self.leads.tolist()
        return out


def sweep(
    q_hat: np.ndarray,
    c_hat: np.ndarray,
    quality: np.ndarray,
    cost: np.ndarray,
    lambdas: np.ndarray | None = None,
    n_lambdas: int = 100,
    lead_col: int | None = None,
) -> Curve:
    """Replay the objective over a lambda grid; realised values come from the records. With
    `lead_col` (the router's model best on average), then the route's `LEADS` at lambda 0:
    the most quality-seeking end of the dial, which ends at always sending there."""
    if lambdas is None:
        lambdas = lambda_grid(q_hat, c_hat, n_lambdas)
    settings = [(float(lam), 0.0) for lam in lambdas]
    if lead_col is not None:
        settings += [(0.0, lead) for lead in LEADS]
    n, m = quality.shape
    rows = np.arange(n)
    out_c, out_q, out_s = [], [], []
    for lam, lead in settings:
        q = q_hat
        if lead:
            q = q_hat.copy()
            q[:, lead_col] += lead
        pick = choose(q, c_hat, lam)
        out_q.append(quality[rows, pick].mean())
        out_c.append(cost[rows, pick].mean())
        out_s.append(np.bincount(pick, minlength=m) / n)
    lams, leads = (np.array(x, float) for x in zip(*settings, strict=True))
    return Curve(
        lams, np.array(out_c), np.array(out_q), np.array(out_s),
        leads if lead_col is not None else None,
    )  # fmt: skip


def mixture_curve(a: int, b: int, quality: np.ndarray, cost: np.ndarray, n: int = 101) -> Curve:
    """Random routing: model b with probability p, else a, for p in 0..1 (expected values of
    the per-model means `quality` and `cost`, [m] each)."""
    p = np.linspace(0, 1, n)
    shares = np.zeros((n, len(quality)))
    shares[:, a] += 1 - p
    shares[:, b] += p
    return Curve(p, (1 - p) * cost[a] + p * cost[b], (1 - p) * quality[a] + p * quality[b], shares)


def point_curve(j: int, quality: np.ndarray, cost: np.ndarray) -> Curve:
    """Always model j: one operating point (per-model means `quality`, `cost`)."""
    shares = np.zeros((1, len(quality)))
    shares[0, j] = 1.0
    return Curve(np.zeros(1), cost[[j]], quality[[j]], shares)


# --- curve geometry -------------------------------------------------------------------------


def envelope(cost: np.ndarray, quality: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vertices of the non-decreasing upper concave hull of the points: the best quality
    reachable at a given cost by one operating point or a random mix of two."""
    order = np.lexsort((-quality, cost))
    xs: list[float] = []
    ys: list[float] = []
    for x, y in zip(cost[order], quality[order], strict=True):
        if ys and y <= ys[-1]:  # dominated: no better than something at lower or equal cost
            continue
        while len(xs) >= 2:
            # Drop the last vertex if it lies on or below the chord to the new point.
            cross = (xs[-1] - xs[-2]) * (y - ys[-2]) - (ys[-1] - ys[-2]) * (x - xs[-2])
            if cross < 0:
                break
            xs.pop()
            ys.pop()
        xs.append(float(x))
        ys.append(float(y))
    return np.array(xs), np.array(ys)


def envelope_at(hull: tuple[np.ndarray, np.ndarray], c: np.ndarray | float) -> np.ndarray:
    """Hull quality at cost c; NaN below the router's cheapest operating point."""
    x, y = hull
    c = np.asarray(c, dtype=float)
    # A hair below the first point is rounding (the mean cost of the same calls), not less.
    return np.where(c < x[0] * (1 - 1e-9), np.nan, np.interp(c, x, y))


def area(hull: tuple[np.ndarray, np.ndarray], lo: float, hi: float) -> float:
    """AIQ: mean hull quality over [lo, hi] (0 where the router cannot operate)."""
    x, y = hull
    if hi <= lo:
        v = envelope_at(hull, lo)
        return float(np.nan_to_num(v))
    start = max(lo, x[0])
    if start >= hi:
        return 0.0
    knots = np.concatenate([[start], x[(x > start) & (x < hi)], [hi]])
    return float(np.trapezoid(np.interp(knots, x, y), knots) / (hi - lo))


def cost_to_reach(hull: tuple[np.ndarray, np.ndarray], target: float) -> float | None:
    """Lowest cost at which the hull reaches the target quality; None if it never does."""
    x, y = hull
    if y[-1] < target:
        return None
    if y[0] >= target:
        return float(x[0])
    i = int(np.argmax(y >= target))
    frac = (target - y[i - 1]) / (y[i] - y[i - 1])
    return float(x[i - 1] + frac * (x[i] - x[i - 1]))


@dataclass(slots=True)
class Reference:
    """Single-model facts of one test split the metrics are relative to."""

    models: list[str]
    quality: np.ndarray  # [m] mean quality per model
    cost: np.ndarray  # [m] mean cost per model
    cheapest: int = field(init=False)
    strongest: int = field(init=False)

    def __post_init__(self) -> None:
        self.cheapest = int(np.lexsort((-self.quality, self.cost))[0])
        self.strongest = int(np.lexsort((self.cost, -self.quality))[0])

    @property
    def lo(self) -> float:
        return float(self.cost.min())

    @property
    def hi(self) -> float:
        return float(self.cost.max())

    def to_json(self) -> dict[str, Any]:
        return {
            "models": {
                m: {"quality": float(self.quality[j]), "cost": float(self.cost[j])}
                for j, m in enumerate(self.models)
            },
            "cheapest": self.models[self.cheapest],
            "strongest": self.models[self.strongest],
            "cost_range": [self.lo, self.hi],
        }


def curve_metrics(curve: Curve, ref: Reference) -> dict[str, Any]:
    hull = envelope(curve.cost, curve.quality)
    q_strong, c_strong = ref.quality[ref.strongest], ref.cost[ref.strongest]
    target = TARGET * q_strong
    at_strong = envelope_at(hull, c_strong)
    c95 = cost_to_reach(hull, target)
    reaching = np.flatnonzero(curve.quality >= target)
    if len(reaching):  # the cheapest single operating point reaching the target
        op = int(reaching[np.argmin(curve.cost[reaching])])
    else:  # else the one spending closest to what the strongest model costs
        op = int(np.argmin(np.abs(curve.cost - c_strong)))
    return {
        "aiq": area(hull, ref.lo, ref.hi),
        "quality_at_strongest_cost": None if np.isnan(at_strong) else float(at_strong),
        "cost_to_95": c95,
        "cost_to_95_pct": None if c95 is None else 100.0 * c95 / c_strong,
        # The most quality-seeking point must reach always-strongest's quality.
        "best_quality": float(curve.quality.max()),
        "below_strongest": bool(curve.quality.max() < q_strong - 1e-9),
        "operating_point": {
            "lambda": float(curve.lambdas[op]),
            "lead": curve.lead_at(op),
            "cost": float(curve.cost[op]),
            "quality": float(curve.quality[op]),
            "reaches_95": bool(len(reaching)),
            "shares": {m: float(curve.shares[op, j]) for j, m in enumerate(ref.models)},
        },
        "hull": {"cost": hull[0].tolist(), "quality": hull[1].tolist()},
    }


def baseline_curves(table: RecordTable, n_lambdas: int = 100) -> tuple[Reference, dict]:
    q, c = table.quality, table.cost
    ref = Reference(list(table.models), q.mean(axis=0), c.mean(axis=0))
    curves = {
        ORACLE: sweep(q, c, q, c, n_lambdas=n_lambdas),
        RANDOM: mixture_curve(ref.cheapest, ref.strongest, ref.quality, ref.cost),
        CHEAPEST: point_curve(ref.cheapest, ref.quality, ref.cost),
        STRONGEST: point_curve(ref.strongest, ref.quality, ref.cost),
    }
    return ref, curves


def predictor_curve(
    predictor: Predictor, queries: Queries, table: RecordTable, n_lambdas: int = 100
) -> Curve:
    q_hat = np.asarray(predictor.predict_quality(queries, table.models), dtype=float)
    c_hat = np.asarray(predictor.predict_cost(queries, table.models), dtype=float)
    want = (len(table), len(table.models))
    if q_hat.shape != want or c_hat.shape != want:
        raise ValueError(f"{predictor.kind}: predictions of shape {q_hat.shape}, want {want}")
    return sweep(q_hat, c_hat, table.quality, table.cost, n_lambdas=n_lambdas)
