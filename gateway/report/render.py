"""Write a report out: a rich table, CSV, JSON (exact values) or a self-contained HTML page."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from rich.table import Table

from gateway.report.build import Report

GATEWAY_DIR = Path(__file__).resolve().parent.parent
TEMPLATES_DIR = GATEWAY_DIR / "templates"
CHART_JS = GATEWAY_DIR / "static" / "vendor" / "chart.umd.min.js"
FIGURES = [
    "requests", "errors", "error_rate", "prompt_tokens", "completion_tokens", "tokens",
    "cached_tokens", "cached_token_rate", "prompt_cache_saved_usd", "cost_usd",
    "latency_p50_ms", "latency_p95_ms", "cache_lookups", "cache_hits",
    "cache_hit_rate", "cache_saved_usd", "cascade_requests", "escalation_rate", "ead_requests",
    "switching_rate", "baseline_cost_usd", "savings_usd", "savings_rate", "quality_requests",
    "predicted_quality", "baseline_predicted_quality",
]  # fmt: skip


def usd(value: float | None) -> str:
    if value is None:
        return "-"
    sign = "-" if value < 0 else ""
    if abs(value) >= 1 or value == 0:
        return f"{sign}${abs(value):,.2f}"
    return f"{sign}${abs(value):.6f}"  # small models cost fractions of a cent per request


def pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def quality_pair(f: dict[str, Any]) -> str:
    if f["predicted_quality"] is None:
        return "-"
    return f"{f['predicted_quality']:.3f} vs {f['baseline_predicted_quality']:.3f}"


def when(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


# (header, cell) per column after the group's name; a narrow terminal gets them in two tables.
_SPEND_COLUMNS: list[tuple[str, Any]] = [
    ("requests", lambda f: f"{f['requests']:,}"),
    ("spend", lambda f: usd(f["cost_usd"])),
    ("tokens", lambda f: f"{f['tokens']:,}"),
    ("p50/p95 ms", lambda f: f"{ms(f['latency_p50_ms'])}/{ms(f['latency_p95_ms'])}"),
    ("errors", lambda f: f"{f['errors']:,}"),
]
_ROUTING_COLUMNS: list[tuple[str, Any]] = [
    ("cache hit", lambda f: pct(f["cache_hit_rate"])),
    # Prompt tokens the upstreams read from their prefix caches, and what that saved.
    ("cached tok/saved", lambda f: f"{f['cached_tokens']:,}/{usd(f['prompt_cache_saved_usd'])}"),
    ("escal./switch", lambda f: f"{pct(f['escalation_rate'])}/{pct(f['switching_rate'])}"),
    ("baseline", lambda f: usd(f["baseline_cost_usd"])),
    ("savings", lambda f: f"{usd(f['savings_usd'])} ({pct(f['savings_rate'])})"),
    ("quality vs base", quality_pair),
]
# Below this many columns the one wide table would cut its figures short ("$0.…").
WIDE_TABLE_COLUMNS = 150


def _table(report: Report, title: str, columns: list[tuple[str, Any]], caption: str) -> Table:
    table = Table(title=title, caption=caption or None)
    names = [*report.groups, "total"]
    # The names fold rather than vanish when the terminal is narrow.
    table.add_column(
        report.by, justify="left", overflow="fold", min_width=min(12, max(map(len, names)))
    )
    for header, _ in columns:
        table.add_column(header, justify="right", overflow="fold")
    for name, figures in report.groups.items():
        table.add_row(name, *(cell(figures) for _, cell in columns))
    table.add_section()
    table.add_row("total", *(cell(report.total) for _, cell in columns), style="bold")
    return table


def to_tables(report: Report, width: int = 200) -> list[Table]:
    """One table when `width` holds it; otherwise spend and routing figures apart; then, for
    --by arm, one table an experiment."""
    baseline = report.baseline_model or "each route's dearest model"
    title = f"Requests {when(report.first_ts)} to {when(report.last_ts)}, by {report.by}"
    caption = f"baseline: {baseline}; quality: predicted, chosen vs baseline"
    if width >= WIDE_TABLE_COLUMNS:
        tables = [_table(report, title, _SPEND_COLUMNS + _ROUTING_COLUMNS, caption)]
    else:
        tables = [
            _table(report, title, _SPEND_COLUMNS, ""),
            _table(report, "Cache, cascades and savings", _ROUTING_COLUMNS, caption),
        ]
    for name, experiment in (report.experiments or {}).items():
        tables.append(experiment_table(name, experiment))
    return tables


def _interval(ci: list[float] | None, show: Any) -> str:
    return "" if ci is None else f" [{show(ci[0])}, {show(ci[1])}]"


def _vs(test: dict[str, Any] | None) -> str:
    if test is None or test["p_value"] is None:
        return ""
    adjusted = test.get("p_adjusted")
    shown = f"\np={test['p_value']:.3g}"
    if adjusted is not None and adjusted != test["p_value"]:
        shown += f" (Holm {adjusted:.3g})"
    return shown + (" significant" if test["significant"] else "")


def _mean_cell(figure: dict[str, Any], show: Any, test: dict[str, Any] | None) -> str:
    if figure["mean"] is None:
        return "-"
    return f"{show(figure['mean'])}{_interval(figure['ci95'], show)} n={figure['n']:,}{_vs(test)}"


def _rate_cell(figure: dict[str, Any], test: dict[str, Any] | None) -> str:
    if figure["rate"] is None:
        return "-"
    return f"{pct(figure['rate'])}{_interval(figure['ci95'], pct)} n={figure['n']:,}{_vs(test)}"


def _score(value: float) -> str:
    return f"{value:.3f}"


EXPERIMENT_HEADERS = (
    "arm", "requests", "spend", "mean cost", "p50/p95 ms", "mean ms", "feedback", "escalation",
    "errors",
)  # fmt: skip
EXPERIMENT_CAPTION = (
    "[95 % CI]; p: vs the control (first arm): Welch's t-test on means, two-proportion z-test "
    "on rates; significant: p < 0.05, Holm-adjusted (shown) when several arms face the control"
)


def experiment_rows(experiment: dict[str, Any]) -> list[list[str]]:
    """One row of cells an arm (a cell's second line: its test against the control)."""
    rows = []
    for arm, f in experiment["arms"].items():
        vs = f["vs_control"] or {}
        rows.append(
            [
                arm,
                f"{f['requests']:,}",
                usd(f["cost_usd"]),
                _mean_cell(f["cost"], usd, vs.get("cost")),
                f"{ms(f['latency_p50_ms'])}/{ms(f['latency_p95_ms'])}",
                _mean_cell(f["latency"], ms, vs.get("latency")),
                _mean_cell(f["feedback"], _score, vs.get("feedback")),
                _rate_cell(f["escalation"], vs.get("escalation")),
                _rate_cell(f["error"], vs.get("error")),
            ]
        )
    return rows


def experiment_table(name: str, experiment: dict[str, Any]) -> Table:
    """An experiment's arms: figures with 95 % intervals, each arm tested against the first."""
    table = Table(
        title=f"Experiment {name} (control: {experiment['control']})", caption=EXPERIMENT_CAPTION
    )
    for header in EXPERIMENT_HEADERS:
        table.add_column(header, justify="left" if header == "arm" else "right", overflow="fold")
    for row in experiment_rows(experiment):
        table.add_row(*row)
    return table


def to_csv(report: Report) -> str:
    """One line per group and a `total` line; full-precision numbers, empty where n/a."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([report.by, *FIGURES])
    for name, figures in [*report.groups.items(), ("total", report.total)]:
        writer.writerow([name, *("" if figures[k] is None else repr(figures[k]) for k in FIGURES)])
    return buffer.getvalue()


def to_json(report: Report) -> str:
    return orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2).decode()


def _script_json(data: Any) -> Markup:
    # Inside <script>, "</" would close the element early and "<!--" can keep it from closing
    # at all: JSON may spell every "<" as \u003c instead.
    return Markup(orjson.dumps(data).decode().replace("<", "\\u003c"))


def to_html(report: Report) -> str:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES_DIR), autoescape=select_autoescape(["html", "j2"])
    )
    env.filters.update(usd=usd, pct=pct, ms=ms)
    template = env.get_template("report.html.j2")
    chart_js = CHART_JS.read_text(encoding="utf-8")
    return template.render(
        report=report,
        total=report.total,
        first=when(report.first_ts),
        last=when(report.last_ts),
        baseline=report.baseline_model or "each route's dearest model",
        quality_pair=quality_pair,
        experiments={
            name: experiment_rows(experiment)
            for name, experiment in (report.experiments or {}).items()
        },
        experiment_headers=EXPERIMENT_HEADERS,
        experiment_caption=EXPERIMENT_CAPTION,
        chart_js=Markup(chart_js.replace("</script", "<\\/script")),
        report_json=_script_json(report.as_dict()),
        charts_json=_script_json(report.charts),
    )
