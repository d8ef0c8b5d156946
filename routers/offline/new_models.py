"""New LLMs, measured: leave each model out of training in turn and add it back.

Per slice with at least three models, per seed (a query split), per left-out model m:
- **without**: each router trained on the records without m, judged on the other models;
- **by description**: the same router, m added from its description alone (no records);
- **retrained**: the router trained with m's records, judged on every model;
- the **oracle** without and with m. The share of the oracle's gain that description and
  retraining each capture is (router's AIQ - AIQ without) / (oracle with - oracle without).
The description of m comes from `--descriptions` (else the shipped ones); its price from its
records, as the gateway takes it from its policy.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from routers.data import DEFAULT_DESCRIPTIONS
from routers.offline.evaluate import (
    Recipe,
    add_described,
    encoders_of,
    lead_column,
    predictions,
    reuse_embeddings,
    rows_of,
    slice_queries,
    slices_of,
    train_recipe,
)
from routers.offline.replay import ORACLE, baseline_curves, curve_metrics, sweep
from routers.predictors.base import Predictor, Queries
from routers.records import RecordTable, load_descriptions, split_by_query


def _aiq(predictor: Predictor | None, queries: Queries, test: RecordTable, n: int) -> float:
    ref, curves = baseline_curves(test, n)
    if predictor is None:
        return curve_metrics(curves[ORACLE], ref)["aiq"]
    q, c = predictions(predictor, queries, test.models)
    lead = lead_column(predictor, test.models)
    curve = sweep(q, c, test.quality, test.cost, n_lambdas=n, lead_col=lead)
    return curve_metrics(curve, ref)["aiq"]


def leave_one_llm_out(
    table: RecordTable,
    recipes: list[Recipe],
    *,
    descriptions: dict[str, str] | None = None,
    seeds: list[int] | None = None,
    test_fraction: float = 0.3,
    n_lambdas: int = 100,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    say = progress or (lambda _msg: None)
    desc = {**load_descriptions(DEFAULT_DESCRIPTIONS), **(descriptions or {})}
    queries = Queries.from_table(table)
    for encoder in encoders_of(recipes):
        queries.ensure_embeddings(encoder)
    pieces = [p for p in slices_of(table) if len(p.models) >= 3]
    if not pieces:
        raise ValueError("leaving one LLM out needs a slice with at least three models")
    out: list[dict[str, Any]] = []
    for piece in pieces:
        lacking = [m for m in piece.models if m not in desc]
        if lacking:
            raise ValueError(f"no description for {', '.join(lacking)}: give --descriptions")
        others = [m for m in table.models if m not in piece.models]
        rows: dict[str, dict[str, list[float]]] = {}
        for seed in seeds if seeds is not None else [0]:
            train, test = split_by_query(table, seed, test_fraction)
            test_rows = np.intersect1d(piece.rows, rows_of(table, test))
            full = table.subset(test_rows).drop_models(others)
            fq = slice_queries(queries, test_rows)
            with reuse_embeddings(queries.texts, queries.embeddings):
                retrained = {r.name: train_recipe(r, train, seed, desc) for r in recipes}
                oracle_with = _aiq(None, fq, full, n_lambdas)
                for m in piece.models:
                    start = time.perf_counter()
                    lean = full.drop_models([m])
                    trained_without = train.drop_models([m])
                    known = {k: v for k, v in desc.items() if k != m}
                    oracle_without = _aiq(None, fq, lean, n_lambdas)
                    for r in recipes:
                        p = train_recipe(r, trained_without, seed, known)
                        without = _aiq(p, fq, lean, n_lambdas)
                        added = add_described(p, full, {m: desc[m]})
                        by_desc = _aiq(p, fq, full, n_lambdas) if added else without
                        got = rows.setdefault(f"{r.name}\t{m}", {})
                        for key, value in (
                            ("without", without),
                            ("description", by_desc),
                            ("retrained", _aiq(retrained[r.name], fq, full, n_lambdas)),
                            ("oracle_without", oracle_without),
                            ("oracle_with", oracle_with),
                            ("placed", float(bool(added))),
                        ):
                            got.setdefault(key, []).append(value)
                    say(f"seed {seed}: {m} left out ({time.perf_counter() - start:.0f}s)")
        out.append(_summary(piece.name, piece.models, rows, recipes))
    return {"split": "leave-one-llm-out", "test_fraction": test_fraction, "slices": out}


def _summary(
    name: str, models: list[str], rows: dict[str, dict[str, list[float]]], recipes: list[Recipe]
) -> dict[str, Any]:
    routers: dict[str, Any] = {}
    for r in recipes:
        per_model: dict[str, Any] = {}
        for m in models:
            v = {k: float(np.mean(x)) for k, x in rows[f"{r.name}\t{m}"].items()}
            gain = v["oracle_with"] - v["oracle_without"]
            for key in ("description", "retrained"):
                v[f"{key}_share"] = (v[key] - v["without"]) / gain if gain > 1e-9 else None
            v["placed"] = bool(v["placed"])
            per_model[m] = v
        shares = {
            key: [v[f"{key}_share"] for v in per_model.values() if v[f"{key}_share"] is not None]
            for key in ("description", "retrained")
        }
        gains = [v["oracle_with"] - v["oracle_without"] for v in per_model.values()]
        routers[r.name] = {
            "models": per_model,
            "mean_description_share": float(np.mean(shares["description"])),
            "mean_retrained_share": float(np.mean(shares["retrained"])),
            # The share of the summed gain: large gains weigh more than small ones.
            "pooled_description_share": float(
                sum(v["description"] - v["without"] for v in per_model.values()) / sum(gains)
            ),
            "pooled_retrained_share": float(
                sum(v["retrained"] - v["without"] for v in per_model.values()) / sum(gains)
            ),
            "worst_description_change": float(
                min(v["description"] - v["without"] for v in per_model.values())
            ),
        }
    return {"name": name, "models": list(models), "routers": routers}


def table(piece: dict[str, Any]) -> Any:
    from rich.table import Table

    t = Table(
        title=f"{piece['name']}: each LLM left out of training, then added back",
        caption=(
            "AIQ on held-out queries; share: of the oracle's gain from the model, captured by "
            "adding it from its description (no records) or by retraining with its records; "
            "- : the router cannot place a model from a description"
        ),
    )
    for col in ("router", "left out", "AIQ without", "by description", "retrained",
                "oracle without -> with", "description share", "retrained share"):  # fmt: skip
        t.add_column(col, justify="left" if col in ("router", "left out") else "right")
    for name, r in piece["routers"].items():
        for m, v in r["models"].items():
            t.add_row(
                name,
                m,
                f"{v['without']:.4f}",
                f"{v['description']:.4f}" if v["placed"] else "-",
                f"{v['retrained']:.4f}",
                f"{v['oracle_without']:.4f} -> {v['oracle_with']:.4f}",
                _pct(v["description_share"]) if v["placed"] else "-",
                _pct(v["retrained_share"]),
            )
        t.add_row(
            name,
            "mean (pooled)",
            "",
            f"worst {r['worst_description_change']:+.4f}",
            "",
            "",
            f"{_pct(r['mean_description_share'])} ({_pct(r['pooled_description_share'])})",
            f"{_pct(r['mean_retrained_share'])} ({_pct(r['pooled_retrained_share'])})",
        )
        t.add_section()
    return t


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:+.0f}%"
