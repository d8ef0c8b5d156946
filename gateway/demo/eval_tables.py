"""The tables `routegate demo eval` prints: accuracy and cost per route, accuracy per task."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text

from gateway.demo.eval_questions import TASKS
from gateway.demo.evaluation import EvalResult, Summary


def _shares(s: Summary) -> str:
    shares = s.shares()
    if not shares or (s.target.kind == "model" and set(shares) == {s.target.name}):
        return ""  # a model that answered itself (else its fallbacks show)
    text = ", ".join(f"{m} {v:.0%}" for m, v in shares.items())
    if s.target.strategy == "ead":
        return f"tokens: {text}"
    if s.target.strategy == "cascade":
        return f"{text}; escalated {s.escalated / max(1, s.asked - s.errors):.0%}"
    return text


def _accuracy(correct: int, asked: int) -> str:
    return f"{correct / asked:.1%} ({correct}/{asked})" if asked else "-"


def summary_table(result: EvalResult) -> Table:
    strong = result.config.strong_route
    table = Table(title=f"Demo eval: {len(result.questions)} questions, temperature 0")
    table.add_column("route / model")
    table.add_column("accuracy", justify="right")
    table.add_column("cost USD", justify="right")
    table.add_column(f"vs {strong}", justify="right")
    table.add_column("mean ms", justify="right")
    table.add_column("answered by")
    rows = result.routes()
    for i, s in enumerate([*rows, *result.models()]):
        name = s.target.name if s.target.kind == "route" else f"{s.target.name} (model)"
        ratio = "-" if s.cost_vs_strong is None else f"{s.cost_vs_strong:.2f}x"
        errors = f", {s.errors} error{'s' if s.errors > 1 else ''}" if s.errors else ""
        table.add_row(
            Text(name),  # names are the policy's: shown as written, never as markup
            _accuracy(s.correct, s.asked) + errors,
            f"{s.cost_usd:.6f}",
            ratio,
            f"{s.mean_latency_s * 1000:.0f}",
            Text(_shares(s)),
            end_section=i == len(rows) - 1,
        )
    return table


def task_table(result: EvalResult) -> Table:
    tasks = [t for t in TASKS if any(q.task == t for q in result.questions)]
    table = Table(title="Accuracy per task")
    table.add_column("route / model")
    for task in tasks:
        table.add_column(task, justify="right")
    rows = result.routes()
    for i, s in enumerate([*rows, *result.models()]):
        name = s.target.name if s.target.kind == "route" else f"{s.target.name} (model)"
        cells = [_accuracy(*s.tasks.get(t, [0, 0])) for t in tasks]
        table.add_row(Text(name), *cells, end_section=i == len(rows) - 1)
    return table


def escalation_lines(result: EvalResult, show: int = 4) -> list[str]:
    """Per cascade route: on which questions it escalated and on which it did not (a few of
    each), so the threshold's effect is visible, not only its rate."""
    lines: list[str] = []
    for summary in result.routes():
        if summary.target.strategy != "cascade":
            continue
        name = summary.target.name
        replies = [r for r in result.replies if r.target == name and r.error is None]
        up = [r for r in replies if len(r.steps) > 1]
        kept = [r for r in replies if len(r.steps) == 1]
        lines.append(f"{name}: escalated on {len(up)} of {len(replies)} questions")
        for label, some in (("escalated", up), ("kept", kept)):
            for r in some[:show]:
                first = r.question.prompt.splitlines()[0]
                lines.append(f"  {label:9} {first!r} -> {r.text.strip()[:60]!r} ({r.model})")
    return lines
