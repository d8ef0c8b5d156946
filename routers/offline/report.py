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
