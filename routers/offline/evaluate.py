"""Offline evaluation of routers by replaying routing records: no model is called.

Protocol (per seed): split the complete records by query (or by task), train a fresh predictor
of each recipe's kind and parameters on the train part, predict quality and cost on the test
part, and sweep lambda in the shared objective argmax(q_hat - lambda x c_hat) (ties to the
cheaper model, as `routers.serving.objective.rank_models`). Each lambda gives one operating
point: the mean realised quality and cost of the chosen models' records.

Metrics, all on test queries only:
- AIQ: area under the router's non-decreasing upper concave hull of (cost, quality) points
  (mixing two operating points at random reaches any point between them, as RouterBench's
  non-decreasing convex hull), integrated over [cheapest, dearest single-model cost] and
  divided by that range. Below a router's cheapest operating point it counts quality 0, so a
  single point is a step.
- quality at the strongest model's cost (strongest = best mean quality on the test split);
- cost to reach 95% of the strongest model's quality ($ and % of the strongest's cost);
- call shares per model at the operating point reaching 95% at the lowest cost (else the point
  whose cost is nearest the strongest's).
Baselines need no artifact: oracle, random at matched cost (the chord between the cheapest and
the strongest model), always-cheapest, always-strongest.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from routers.predictors import artifact
from routers.predictors.base import Predictor, Queries
from routers.records import RecordTable, split_by_query, split_by_task

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


@dataclass
class Curve:
    """Operating points of one router on one test split, in lambda order."""

    lambdas: np.ndarray  # [L]
    cost: np.ndarray  # [L] mean realised cost per query
    quality: np.ndarray  # [L] mean realised quality
    shares: np.ndarray  # [L, n_models] share of calls per model

    def to_json(self, models: list[str]) -> dict[str, Any]:
        return {
            "lambda": self.lambdas.tolist(),
            "cost": self.cost.tolist(),
            "quality": self.quality.tolist(),
            "shares": {m: self.shares[:, j].tolist() for j, m in enumerate(models)},
        }


def sweep(
    q_hat: np.ndarray,
    c_hat: np.ndarray,
    quality: np.ndarray,
    cost: np.ndarray,
    lambdas: np.ndarray | None = None,
    n_lambdas: int = 100,
) -> Curve:
    """Replay the objective over a lambda grid; realised values come from the records."""
    if lambdas is None:
        lambdas = lambda_grid(q_hat, c_hat, n_lambdas)
    n, m = quality.shape
    rows = np.arange(n)
    out_c, out_q, out_s = [], [], []
    for lam in lambdas:
        pick = choose(q_hat, c_hat, float(lam))
        out_q.append(quality[rows, pick].mean())
        out_c.append(cost[rows, pick].mean())
        out_s.append(np.bincount(pick, minlength=m) / n)
    return Curve(np.asarray(lambdas, float), np.array(out_c), np.array(out_q), np.array(out_s))


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
    return np.where(c < x[0], np.nan, np.interp(c, x, y))


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


@dataclass
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
        "operating_point": {
            "lambda": float(curve.lambdas[op]),
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


# --- the protocol ---------------------------------------------------------------------------


@dataclass
class Recipe:
    """A router to evaluate: its kind and training parameters, from an artifact directory."""

    name: str
    kind: str
    params: dict[str, Any]
    directory: Path | None = None


def load_recipes(directories: list[str | Path]) -> list[Recipe]:
    recipes: list[Recipe] = []
    for d in directories:
        manifest = artifact.read_manifest(d)
        name = Path(d).resolve().name
        if name in BASELINES or any(r.name == name for r in recipes):
            name = f"{name} [{manifest['kind']}]"
        recipes.append(Recipe(name, manifest["kind"], dict(manifest["params"]), Path(d)))
    return recipes


def slice_queries(queries: Queries, rows: np.ndarray | list[int]) -> Queries:
    """The queries at `rows`, sharing already computed embeddings."""
    idx = np.asarray(rows, dtype=int)
    return Queries(
        [queries.texts[i] for i in idx],
        [queries.tasks[i] for i in idx],
        queries.input_tokens[idx],
        None if queries.embeddings is None else queries.embeddings[idx],
        dict(queries.extra),
    )


@contextlib.contextmanager
def reuse_embeddings(texts: list[str], vectors: np.ndarray) -> Iterator[None]:
    """Serve already computed embeddings to every `embed` call (predictors' `train` embeds its
    table's queries itself): each query is embedded once per evaluation, not once per seed and
    router. Unknown texts still go to the real model."""
    from routers.predictors import embedding

    original = embedding.embed
    known = dict(zip(texts, vectors, strict=True))

    def embed(batch: list[str], *args: Any, **kwargs: Any) -> np.ndarray:
        missing = [t for t in dict.fromkeys(batch) if t not in known]
        if missing:
            known.update(zip(missing, original(missing, *args, **kwargs), strict=True))
        if not batch:
            return original(batch, *args, **kwargs)
        return np.stack([known[t] for t in batch]).astype(np.float32)

    embedding.embed = embed
    try:
        yield
    finally:
        embedding.embed = original


def _rows(table: RecordTable, part: RecordTable) -> np.ndarray:
    where = {q: i for i, q in enumerate(table.query_ids)}
    return np.array([where[q] for q in part.query_ids], dtype=int)


def _run(
    table: RecordTable,
    test_rows: np.ndarray,
    queries: Queries,
    routers: dict[str, Callable[[], Predictor]],
    n_lambdas: int,
) -> dict[str, Any]:
    """One split: baselines plus every router, judged on `test_rows` only."""
    test = table.subset(test_rows)
    test_queries = slice_queries(queries, test_rows)
    ref, curves = baseline_curves(test, n_lambdas)
    timings: dict[str, float] = {}
    for name, make in routers.items():
        start = time.perf_counter()
        predictor = make()
        curves[name] = predictor_curve(predictor, test_queries, test, n_lambdas)
        timings[name] = time.perf_counter() - start
    return {
        "n_test": len(test),
        "reference": ref.to_json(),
        "routers": {
            name: {
                "curve": curve.to_json(ref.models),
                **curve_metrics(curve, ref),
                **({"seconds": timings[name]} if name in timings else {}),
            }
            for name, curve in curves.items()
        },
    }


def evaluate(
    table: RecordTable,
    recipes: list[Recipe],
    *,
    seeds: list[int] | None = None,
    test_fraction: float = 0.3,
    split: str = "query",
    descriptions: dict[str, str] | None = None,
    as_is: bool = False,
    n_lambdas: int = 100,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Replay every recipe (and the baselines) over the seeds; JSON-ready results."""
    say = progress or (lambda _msg: None)
    table = table.subset(table.complete_rows())
    if len(table) == 0:
        raise ValueError("no query has a record for every model: nothing to replay")
    queries = Queries.from_table(table)
    start = time.perf_counter()
    queries.ensure_embeddings()
    say(f"embedded {len(table)} queries in {time.perf_counter() - start:.1f}s")
    runs: list[dict[str, Any]] = []
    if as_is:
        seen: set[str] = set()
        loaded: dict[str, Predictor] = {}
        for r in recipes:
            if r.directory is None:
                raise ValueError(f"{r.name}: --as-is needs an artifact directory")
            loaded[r.name] = artifact.load(r.directory)
            seen |= artifact.train_query_ids(r.directory)
        test_rows = np.array([i for i, q in enumerate(table.query_ids) if q not in seen], int)
        if len(test_rows) == 0:
            raise ValueError("every query was used to train some router: nothing to judge on")
        makers = {name: (lambda p=p: p) for name, p in loaded.items()}
        run = _run(table, test_rows, queries, makers, n_lambdas)
        runs.append({"seed": None, "n_train": len(table) - len(test_rows), **run})
    else:
        splitter = {"query": split_by_query, "task": split_by_task}[split]
        for seed in seeds if seeds is not None else list(range(5)):
            train, test = splitter(table, seed, test_fraction)
            if len(train) == 0 or len(test) == 0:
                raise ValueError(f"seed {seed}: the {split} split left an empty train or test")
            train_rows = _rows(table, train)

            def make(r: Recipe, seed: int = seed, train: RecordTable = train) -> Predictor:
                cls = artifact.predictor_class(r.kind)
                # An artifact may record the descriptions it was trained with; explicit ones win.
                params = dict(r.params)
                known = {**(params.pop("descriptions", None) or {}), **(descriptions or {})}
                return cls.train(train, seed=seed, descriptions=known or None, **params)

            makers = {r.name: (lambda r=r, make=make: make(r)) for r in recipes}
            with reuse_embeddings(queries.texts, queries.embeddings):
                run = _run(table, _rows(table, test), queries, makers, n_lambdas)
            runs.append({"seed": seed, "n_train": len(train_rows), **run})
            say(f"seed {seed}: {len(train)} train / {len(test)} test queries")
    names = [ORACLE, *(r.name for r in recipes), RANDOM, CHEAPEST, STRONGEST]
    return {
        "models": list(table.models),
        "queries": len(table),
        "split": "as-is" if as_is else split,
        "test_fraction": None if as_is else test_fraction,
        "seeds": [run["seed"] for run in runs],
        "routers": {n: {"kind": _kind(n, recipes)} for n in names},
        "runs": runs,
        "aggregate": aggregate(runs, names, list(table.models)),
        "mean_curves": mean_curves(runs, names),
    }


def _kind(name: str, recipes: list[Recipe]) -> str:
    for r in recipes:
        if r.name == name:
            return r.kind
    return "baseline"


def _stats(values: list[float | None]) -> dict[str, Any]:
    got = [v for v in values if v is not None]
    return {
        "mean": float(np.mean(got)) if got else None,
        "std": float(np.std(got)) if got else None,
        "n": len(got),
        "of": len(values),
    }


def aggregate(runs: list[dict[str, Any]], names: list[str], models: list[str]) -> dict[str, Any]:
    """Mean and std over seeds of every metric (None-valued seeds, e.g. "not reached", are
    counted in `n` of `of`)."""
    out: dict[str, Any] = {}
    for name in names:
        per = [run["routers"][name] for run in runs]
        out[name] = {
            key: _stats([p[key] for p in per])
            for key in ("aiq", "quality_at_strongest_cost", "cost_to_95", "cost_to_95_pct")
        }
        out[name]["shares"] = {
            m: _stats([p["operating_point"]["shares"][m] for p in per]) for m in models
        }
        out[name]["reaches_95"] = sum(p["operating_point"]["reaches_95"] for p in per)
        # Paired per seed: splits differ a lot (whole subjects in a task split), routers on one
        # split much less.
        out[name]["aiq_minus_random"] = _stats(
            [p["aiq"] - run["routers"][RANDOM]["aiq"] for p, run in zip(per, runs, strict=True)]
        )
    return out


def mean_curves(runs: list[dict[str, Any]], names: list[str], n: int = 200) -> dict[str, Any]:
    """Each router's hull averaged over seeds on a shared log-spaced cost grid (None where some
    seed's router cannot spend that little), plus the mean single-model points."""
    lo = min(run["reference"]["cost_range"][0] for run in runs)
    hi = max(run["reference"]["cost_range"][1] for run in runs)
    grid = np.geomspace(lo * 0.8, hi * 1.25, n) if lo > 0 else np.linspace(0, hi * 1.25, n)
    curves: dict[str, Any] = {"cost": grid.tolist(), "routers": {}}
    for name in names:
        values = []
        for run in runs:
            h = run["routers"][name]["hull"]
            values.append(envelope_at((np.array(h["cost"]), np.array(h["quality"])), grid))
        mean = np.mean(values, axis=0)  # only where every seed's router can operate
        curves["routers"][name] = [None if np.isnan(v) else float(v) for v in mean]
    models = list(runs[0]["reference"]["models"])
    curves["models"] = {
        m: {
            k: float(np.mean([run["reference"]["models"][m][k] for run in runs]))
            for k in ("quality", "cost")
        }
        for m in models
    }
    return curves


# --- presentation ---------------------------------------------------------------------------


def short(model: str) -> str:
    return model.rsplit("/", 1)[-1]


def _fmt(s: dict[str, Any], fmt: str, suffix: str = "") -> str:
    if s["mean"] is None:
        return "not reached" if s["of"] else "-"
    text = f"{s['mean']:{fmt}}{suffix}"
    if s["of"] > 1:
        text += f" ± {s['std']:{fmt.lstrip('+')}}"
    return text if s["n"] == s["of"] else f"{text} ({s['n']}/{s['of']} seeds)"


def results_table(results: dict[str, Any]) -> Any:
    from rich.table import Table

    runs = results["runs"]
    ref = runs[0]["reference"]
    strongest = ref["strongest"]
    split = results["split"]
    where = (
        f"{len(runs)} seed(s), {split} split, test fraction {results['test_fraction']}"
        if split != "as-is"
        else "the saved artifacts, on queries none of them was trained on"
    )
    sizes = sorted({run["n_test"] for run in runs})
    n_test = str(sizes[0]) if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]}"
    table = Table(
        title=f"Routers on {n_test} test queries per run ({where})",
        caption=(
            f"strongest: {short(strongest)} (quality "
            f"{np.mean([r['reference']['models'][strongest]['quality'] for r in runs]):.4f}, "
            f"${np.mean([r['reference']['models'][strongest]['cost'] for r in runs]):.3g}/query); "
            "AIQ: mean of the quality-cost hull over the single-model cost range (0 below a "
            "router's cheapest point); 95%: of the strongest's quality; call shares at the "
            "cheapest operating point reaching it (* else the one nearest the strongest's cost)"
        ),
    )
    cols = ("router", "AIQ", "AIQ - random", "quality @ strongest's $", "$ to reach 95%",
            "% of strongest $")  # fmt: skip
    for col in cols:
        table.add_column(col, justify="left" if col == "router" else "right", no_wrap=True)
    table.add_column("call shares")
    for name, agg in results["aggregate"].items():
        shares = " · ".join(
            f"{short(m)} {100 * s['mean']:.0f}%" for m, s in agg["shares"].items() if s["mean"]
        )
        if agg["reaches_95"] < len(runs):
            shares += " *"
        table.add_row(
            name,
            _fmt(agg["aiq"], ".4f"),
            _fmt(agg["aiq_minus_random"], "+.4f"),
            _fmt(agg["quality_at_strongest_cost"], ".4f"),
            _fmt(agg["cost_to_95"], ".3g"),
            _fmt(agg["cost_to_95_pct"], ".1f", "%"),
            shares,
        )
    return table


def plot(results: dict[str, Any], out: str | Path) -> Path:
    """Mean quality-cost hulls of every router, the oracle, the random chord and the
    single-model points; log cost axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = results["mean_curves"]
    grid = np.array(curves["cost"])
    fig, ax = plt.subplots(figsize=(8, 5.5))
    styles = {ORACLE: ("k", "--"), RANDOM: ("0.5", ":")}
    for name, values in curves["routers"].items():
        if name in (CHEAPEST, STRONGEST):
            continue  # they are the single-model points
        y = np.array([np.nan if v is None else v for v in values])
        color, line = styles.get(name, (None, "-"))
        aiq = results["aggregate"][name]["aiq"]["mean"]
        ax.plot(grid, y, linestyle=line, color=color, label=f"{name} (AIQ {aiq:.3f})")
    for model, p in curves["models"].items():
        ax.scatter([p["cost"]], [p["quality"]], marker="s", color="k", zorder=3)
        ax.annotate(short(model), (p["cost"], p["quality"]), textcoords="offset points",
                    xytext=(5, -12), fontsize=8)  # fmt: skip
    if grid[0] > 0:
        ax.set_xscale("log")
    ax.set_xlabel("mean cost per query (USD)")
    ax.set_ylabel("mean quality")
    ax.set_title(f"Quality vs cost ({results['split']} split, mean over {len(results['runs'])})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
