"""Offline evaluation of predictors by replaying routing records: no model is called.

Protocol (per seed): split the complete records by query (or by task), train a fresh predictor
of each recipe's kind and parameters on the train part, predict quality and cost on the test
part, and replay the objective over a lambda sweep (`routers.offline.replay`, which also
defines the metrics). `--as-is` judges the saved artifacts themselves instead, on the queries
none of them was trained on. Results are JSON-ready; `routers.offline.report` prints and plots
them.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from routers.offline.replay import (
    BASELINES,
    CHEAPEST,
    ORACLE,
    RANDOM,
    STRONGEST,
    baseline_curves,
    curve_metrics,
    envelope_at,
    predictor_curve,
)
from routers.predictors import artifact
from routers.predictors.base import Predictor, Queries
from routers.records import RecordTable, split_by_query, split_by_task


@dataclass(slots=True)
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
