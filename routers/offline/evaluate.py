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
    sweep,
)
from routers.predictors import artifact
from routers.predictors.base import CostModel, Predictor, Queries
from routers.predictors.embedding import DEFAULT_ENCODER
from routers.predictors.guard import GuardedPredictor
from routers.records import RecordTable, split_by_query, split_by_task


@dataclass(slots=True)
class Recipe:
    """A router to evaluate: its kind and training parameters, from an artifact directory."""

    name: str
    kind: str
    params: dict[str, Any]
    directory: Path | None = None
    guard: dict[str, Any] | None = None  # the guard's parameters (None: its defaults)


def load_recipes(directories: list[str | Path]) -> list[Recipe]:
    recipes: list[Recipe] = []
    for d in directories:
        manifest = artifact.read_manifest(d)
        name = Path(d).resolve().name
        if name in BASELINES or any(r.name == name for r in recipes):
            name = f"{name} [{manifest['kind']}]"
        guard = manifest.get("guard", {}).get("params")
        params = artifact.trained_params(manifest)
        recipes.append(Recipe(name, manifest["kind"], params, Path(d), guard))
    return recipes


def encoders_of(recipes: list[Recipe]) -> list[str]:
    return sorted({str(r.params.get("encoder", DEFAULT_ENCODER)) for r in recipes})


def slice_queries(queries: Queries, rows: np.ndarray | list[int]) -> Queries:
    """The queries at `rows`, sharing already computed embeddings."""
    idx = np.asarray(rows, dtype=int)
    return Queries(
        [queries.texts[i] for i in idx],
        [queries.tasks[i] for i in idx],
        queries.input_tokens[idx],
        {encoder: vectors[idx] for encoder, vectors in queries.embeddings.items()},
        dict(queries.extra),
    )


@contextlib.contextmanager
def reuse_embeddings(texts: list[str], vectors: dict[str, np.ndarray]) -> Iterator[None]:
    """Serve already computed embeddings (per encoder) to every `embed` call (predictors'
    `train` embeds its table's queries itself): each query is embedded once per evaluation and
    encoder, not once per seed and router. Unknown texts still go to the real model."""
    from routers.predictors import embedding

    original = embedding.embed
    known = {e: dict(zip(texts, v, strict=True)) for e, v in vectors.items()}

    def embed(batch: list[str], encoder: str = embedding.REFERENCE_ENCODER) -> np.ndarray:
        seen = known.setdefault(encoder, {})
        missing = [t for t in dict.fromkeys(batch) if t not in seen]
        if missing:
            seen.update(zip(missing, original(missing, encoder), strict=True))
        if not batch:
            return original(batch, encoder)
        return np.stack([seen[t] for t in batch]).astype(np.float32)

    embedding.embed = embed
    try:
        yield
    finally:
        embedding.embed = original


def rows_of(table: RecordTable, part: RecordTable) -> np.ndarray:
    where = {q: i for i, q in enumerate(table.query_ids)}
    return np.array([where[q] for q in part.query_ids], dtype=int)


@dataclass(slots=True)
class Slice:
    """What one source file's queries are judged on: its models, and its queries that have a
    record for every one of them (the only ones a replay can judge fairly)."""

    name: str
    models: list[str]
    rows: np.ndarray  # rows of the full table


def slices_of(table: RecordTable) -> list[Slice]:
    out: list[Slice] = []
    sources = [table.source_of(i) for i in range(len(table))]
    for name in dict.fromkeys(sources):
        mine = np.array([i for i, s in enumerate(sources) if s == name], int)
        seen = ~np.isnan(table.quality[mine])
        cols = np.flatnonzero(seen.any(axis=0))
        complete = mine[seen[:, cols].all(axis=1)]
        if len(cols) >= 2 and len(complete):
            out.append(Slice(name, [table.models[j] for j in cols], complete))
    if not out:
        raise ValueError("no query has a record for every model: nothing to replay")
    return out


def knows(predictor: Predictor, model: str) -> bool:
    check = getattr(predictor, "knows", None)
    return bool(check(model)) if check is not None else model in predictor.models


def predictions(
    predictor: Predictor, queries: Queries, models: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Predicted quality and cost on `models`; a model the router does not know is never
    chosen (it is judged on the models it knows)."""
    known = [m for m in models if knows(predictor, m)]
    if not known:
        raise ValueError(f"{predictor.kind}: knows none of {', '.join(models)}")
    q = np.full((len(queries), len(models)), -1e9)
    c = np.full((len(queries), len(models)), 1e9)
    cols = [models.index(m) for m in known]
    q[:, cols] = np.asarray(predictor.predict_quality(queries, known), dtype=float)
    c[:, cols] = np.asarray(predictor.predict_cost(queries, known), dtype=float)
    return q, c


Predicted = tuple[np.ndarray, np.ndarray, int | None]  # quality, cost, the lead's column


def lead_column(predictor: Predictor, models: list[str]) -> int | None:
    """The column of the model the router finds best on average among those it knows (where
    a route's `lead` goes); None for a router without a prior."""
    prior = getattr(predictor, "prior", None)
    known = [m for m in models if knows(predictor, m)]
    if prior is None or not known:
        return None
    return models.index(known[int(np.argmax(prior(known)))])


def _judge(test: RecordTable, predicted: dict[str, Predicted], n_lambdas: int) -> dict[str, Any]:
    """Baselines plus every router's curve and metrics on one test table."""
    ref, curves = baseline_curves(test, n_lambdas)
    for name, (q_hat, c_hat, lead) in predicted.items():
        curves[name] = sweep(
            q_hat, c_hat, test.quality, test.cost, n_lambdas=n_lambdas, lead_col=lead
        )
    return {
        "n_test": len(test),
        "reference": ref.to_json(),
        "routers": {
            name: {"curve": curve.to_json(ref.models), **curve_metrics(curve, ref)}
            for name, curve in curves.items()
        },
    }


def _judge_slice(
    table: RecordTable,
    piece: Slice,
    test_rows: np.ndarray,
    queries: Queries,
    routers: dict[str, Predictor],
    n_lambdas: int,
) -> dict[str, Any]:
    """One slice of one split: the totals, and the same per task (without the curves)."""
    test = table.subset(test_rows).drop_models([m for m in table.models if m not in piece.models])
    test_queries = slice_queries(queries, test_rows)
    predicted: dict[str, Predicted] = {}
    timings: dict[str, float] = {}
    for name, predictor in routers.items():
        start = time.perf_counter()
        q, c = predictions(predictor, test_queries, test.models)
        timings[name] = time.perf_counter() - start
        predicted[name] = (q, c, lead_column(predictor, test.models))
    run = _judge(test, predicted, n_lambdas)
    for name, seconds in timings.items():
        run["routers"][name]["seconds"] = seconds
        run["routers"][name]["models_known"] = [m for m in test.models if knows(routers[name], m)]
    by_task: dict[str, Any] = {}
    tasks = np.array(test.tasks)
    for task in sorted(set(test.tasks)):
        rows = np.flatnonzero(tasks == task)
        part = _judge(
            test.subset(rows),
            {n: (q[rows], c[rows], lead) for n, (q, c, lead) in predicted.items()},
            n_lambdas,
        )
        for r in part["routers"].values():
            del r["curve"]
        by_task[task] = part
    run["by_task"] = by_task
    return run


def train_recipe(
    r: Recipe, train: RecordTable, seed: int, descriptions: dict[str, str] | None
) -> Any:
    # An artifact may record the descriptions it was trained with; explicit ones win.
    params = dict(r.params)
    known = {**(params.pop("descriptions", None) or {}), **(descriptions or {})}
    if r.guard is not None:
        params["guard"] = r.guard
    return artifact.train(r.kind, train, seed=seed, descriptions=known or None, params=params)


def add_described(
    predictor: Predictor, table: RecordTable, descriptions: dict[str, str] | None
) -> list[str]:
    """Every model of the records the router does not know joins from its description, where
    the router can place one; returns the models added. The price of a new model is a fact
    (the gateway reads it from its policy): here it comes from that model's records."""
    add = getattr(predictor, "add_model", None)
    added: list[str] = []
    for m in table.models:
        if knows(predictor, m) or add is None or not descriptions or m not in descriptions:
            continue
        if isinstance(predictor, GuardedPredictor):
            predictor.add_model(
                m,
                descriptions[m],
                cost=CostModel.fit(table.drop_models([x for x in table.models if x != m])),
            )
        else:
            add(m, descriptions[m])
        added.append(m)
    return added


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
    """Replay every recipe (and the baselines) over the seeds, per slice (source file) and
    per task; JSON-ready results. Training uses every record of the train part, whatever
    models a query has."""
    say = progress or (lambda _msg: None)
    pieces = slices_of(table)
    queries = Queries.from_table(table)
    start = time.perf_counter()
    for encoder in encoders_of(recipes):
        queries.ensure_embeddings(encoder)
    say(f"embedded {len(table)} queries in {time.perf_counter() - start:.1f}s")
    runs: dict[str, list[dict[str, Any]]] = {p.name: [] for p in pieces}
    added: dict[str, list[str]] = {}
    if as_is:
        seen: set[str] = set()
        loaded: dict[str, Predictor] = {}
        for r in recipes:
            if r.directory is None:
                raise ValueError(f"{r.name}: --as-is needs an artifact directory")
            loaded[r.name] = artifact.load(r.directory)
            added[r.name] = add_described(loaded[r.name], table, descriptions)
            seen |= artifact.train_query_ids(r.directory)
        unseen = np.array([i for i, q in enumerate(table.query_ids) if q not in seen], int)
        for piece in pieces:
            test_rows = np.intersect1d(piece.rows, unseen)
            if len(test_rows) == 0:
                continue
            run = _judge_slice(table, piece, test_rows, queries, loaded, n_lambdas)
            runs[piece.name].append(
                {"seed": None, "n_train": len(piece.rows) - len(test_rows), **run}
            )
        if not any(runs.values()):
            raise ValueError("every query was used to train some router: nothing to judge on")
    else:
        splitter = {"query": split_by_query, "task": split_by_task}[split]
        for seed in seeds if seeds is not None else list(range(5)):
            train, test = splitter(table, seed, test_fraction)
            if len(train) == 0 or len(test) == 0:
                if split == "task" and len(set(table.tasks)) < 2:
                    raise ValueError("a task split needs records of at least two tasks")
                raise ValueError(f"seed {seed}: the {split} split left an empty train or test")
            with reuse_embeddings(queries.texts, queries.embeddings):
                trained = {r.name: train_recipe(r, train, seed, descriptions) for r in recipes}
                test_rows = rows_of(table, test)
                for piece in pieces:
                    rows = np.intersect1d(piece.rows, test_rows)
                    if len(rows) == 0:
                        continue
                    run = _judge_slice(table, piece, rows, queries, trained, n_lambdas)
                    runs[piece.name].append({"seed": seed, "n_train": len(train), **run})
            say(f"seed {seed}: {len(train)} train / {len(test)} test queries")
    names = [ORACLE, *(r.name for r in recipes), RANDOM, CHEAPEST, STRONGEST]
    kinds = {n: _kind(n, recipes) for n in names}
    return {
        "split": "as-is" if as_is else split,
        "test_fraction": None if as_is else test_fraction,
        "seeds": sorted(
            {run["seed"] for rs in runs.values() for run in rs},
            key=lambda s: -1 if s is None else s,
        ),
        "routers": {
            n: {"kind": kinds[n], **({"added_by_description": added[n]} if added.get(n) else {})}
            for n in names
        },
        "slices": [
            summarise(piece, runs[piece.name], names, kinds) for piece in pieces if runs[piece.name]
        ],
    }


def summarise(
    piece: Slice, runs: list[dict[str, Any]], names: list[str], kinds: dict[str, str]
) -> dict[str, Any]:
    """One slice's runs, their aggregate, mean curves and per-task aggregates."""
    by_task: dict[str, Any] = {}
    for task in sorted({t for run in runs for t in run["by_task"]}):
        task_runs = [run["by_task"][task] for run in runs if task in run["by_task"]]
        by_task[task] = {
            "runs": len(task_runs),
            "n_test": int(np.mean([r["n_test"] for r in task_runs])),
            "reference": task_runs[0]["reference"],
            "aggregate": aggregate(task_runs, names, piece.models, kinds),
        }
    for run in runs:
        del run["by_task"]
    return {
        "name": piece.name,
        "models": list(piece.models),
        "queries": len(piece.rows),
        "seeds": [run["seed"] for run in runs],
        "runs": runs,
        "aggregate": aggregate(runs, names, piece.models, kinds),
        "mean_curves": mean_curves(runs, names),
        "by_task": by_task,
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


def aggregate(
    runs: list[dict[str, Any]],
    names: list[str],
    models: list[str],
    kinds: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Mean and std over seeds of every metric (None-valued seeds, e.g. "not reached", are
    counted in `n` of `of`), and a learned router's flags: never reaching 95% of the
    strongest, or a best point below always-strongest, on some seed."""
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
        flags = []
        if (kinds or {}).get(name, "baseline") != "baseline":
            if any(p["cost_to_95"] is None for p in per):
                flags.append("never reaches 95%")
            if any(p["below_strongest"] for p in per):
                flags.append("best point below always-strongest")
        out[name]["flags"] = flags
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
