"""Presenting evaluation results: the terminal table and the quality-cost plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from routers.offline.replay import CHEAPEST, ORACLE, RANDOM, STRONGEST


def short(model: str) -> str:
    return model.rsplit("/", 1)[-1]


def _fmt(s: dict[str, Any], fmt: str, suffix: str = "") -> str:
    if s["mean"] is None:
        return "not reached" if s["of"] else "-"
    text = f"{s['mean']:{fmt}}{suffix}"
    if s["of"] > 1:
        text += f" ± {s['std']:{fmt.lstrip('+')}}"
    return text if s["n"] == s["of"] else f"{text} ({s['n']}/{s['of']} seeds)"


def results_table(results: dict[str, Any], piece: dict[str, Any]) -> Any:
    """One slice's totals: a row per router."""
    from rich.table import Table

    runs = piece["runs"]
    strongest = runs[0]["reference"]["strongest"]
    split = results["split"]
    where = (
        f"{len(runs)} seed(s), {split} split, test fraction {results['test_fraction']}"
        if split != "as-is"
        else "the saved artifacts, on queries none of them was trained on"
    )
    sizes = sorted({run["n_test"] for run in runs})
    n_test = str(sizes[0]) if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]}"
    table = Table(
        title=f"{piece['name']}: routers on {n_test} test queries per run ({where}); "
        f"{len(piece['models'])} models",
        caption=(
            f"strongest: {short(strongest)} (quality "
            f"{np.mean([r['reference']['models'][strongest]['quality'] for r in runs]):.4f}, "
            f"${np.mean([r['reference']['models'][strongest]['cost'] for r in runs]):.3g}/query); "
            "AIQ: mean of the quality-cost hull over the single-model cost range (0 below a "
            "router's cheapest point); 95%: of the strongest's quality; call shares at the "
            "cheapest operating point reaching it (* else the one nearest the strongest's cost); "
            "! flags a learned router that never reaches 95% or whose best point is below "
            "always-strongest"
        ),
    )
    _columns(table, "router")
    table.add_column("call shares")
    for name, agg in piece["aggregate"].items():
        shares = " · ".join(
            f"{short(m)} {100 * s['mean']:.0f}%"
            for m, s in agg["shares"].items()
            if (s["mean"] or 0) >= 0.005
        )
        if agg["reaches_95"] < len(runs):
            shares += " *"
        table.add_row(_label(name, agg, results), *_metrics(agg), shares)
    return table


def by_task_table(results: dict[str, Any], piece: dict[str, Any]) -> Any:
    """One slice per task: a row per (task, router), the task's strongest model named."""
    from rich.table import Table

    table = Table(
        title=f"{piece['name']}: per task (mean over the runs that held the task out)",
        caption="! as above; strongest: the best single model on that task's test queries",
    )
    table.add_column("task", no_wrap=True)
    table.add_column("runs", justify="right")
    _columns(table, "router")
    table.add_column("strongest")
    for task, entry in piece["by_task"].items():
        first = True
        for name, agg in entry["aggregate"].items():
            if name in (CHEAPEST, STRONGEST):
                continue
            table.add_row(
                task if first else "",
                str(entry["runs"]) if first else "",
                _label(name, agg, results),
                *_metrics(agg),
                short(entry["reference"]["strongest"]) if first else "",
            )
            first = False
        table.add_section()
    return table


def _columns(table: Any, first: str) -> None:
    cols = (first, "AIQ", "AIQ - random", "quality @ strongest's $", "$ to reach 95%",
            "% of strongest $")  # fmt: skip
    for col in cols:
        table.add_column(col, justify="left" if col == first else "right", no_wrap=True)


def _label(name: str, agg: dict[str, Any], results: dict[str, Any]) -> str:
    added = results["routers"].get(name, {}).get("added_by_description")
    text = name + (f" (+{len(added)} by description)" if added else "")
    return f"{text} ! {'; '.join(agg['flags'])}" if agg.get("flags") else text


def _metrics(agg: dict[str, Any]) -> list[str]:
    return [
        _fmt(agg["aiq"], ".4f"),
        _fmt(agg["aiq_minus_random"], "+.4f"),
        _fmt(agg["quality_at_strongest_cost"], ".4f"),
        _fmt(agg["cost_to_95"], ".3g"),
        _fmt(agg["cost_to_95_pct"], ".1f", "%"),
    ]


def plot(results: dict[str, Any], out: str | Path) -> Path:
    """Mean quality-cost hulls of every router, the oracle, the random chord and the
    single-model points; log cost axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pieces = results["slices"]
    fig, axes = plt.subplots(1, len(pieces), figsize=(8 * len(pieces), 5.5), squeeze=False)
    for ax, piece in zip(axes[0], pieces, strict=True):
        _panel(ax, results, piece)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def _panel(ax: Any, results: dict[str, Any], piece: dict[str, Any]) -> None:
    curves = piece["mean_curves"]
    grid = np.array(curves["cost"])
    styles = {ORACLE: ("k", "--"), RANDOM: ("0.5", ":")}
    for name, values in curves["routers"].items():
        if name in (CHEAPEST, STRONGEST):
            continue  # they are the single-model points
        y = np.array([np.nan if v is None else v for v in values])
        color, line = styles.get(name, (None, "-"))
        aiq = piece["aggregate"][name]["aiq"]["mean"]
        ax.plot(grid, y, linestyle=line, color=color, label=f"{name} (AIQ {aiq:.3f})")
    for model, p in curves["models"].items():
        ax.scatter([p["cost"]], [p["quality"]], marker="s", color="k", zorder=3)
        ax.annotate(short(model), (p["cost"], p["quality"]), textcoords="offset points",
                    xytext=(5, -12), fontsize=8)  # fmt: skip
    if grid[0] > 0:
        ax.set_xscale("log")
    ax.set_xlabel("mean cost per query (USD)")
    ax.set_ylabel("mean quality")
    ax.set_title(
        f"{piece['name']}: quality vs cost ({results['split']} split, "
        f"mean over {len(piece['runs'])})"
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
