"""`routegate report`: spend, traffic, savings and quality from the request log."""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from gateway.accounting.log_store import is_postgres_url, safe_location
from gateway.report.build import GROUPINGS, Report, build_report
from gateway.report.load import ReportError, count_rows
from gateway.report.render import to_csv, to_html, to_json, to_tables
from gateway.report.timespec import parse_when
from policies.loader import PolicyError, example_policy_path, load_policy

FORMATS = ("table", "csv", "json", "html")
# Past this many rows a progress bar shows the read (a few seconds of work).
PROGRESS_MIN_ROWS = 50_000

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def _fail(message: str) -> typer.Exit:
    typer.echo(message, err=True)  # plain and unwrapped: FILE:LINE:COL stays parseable
    return typer.Exit(1)


def _when(option: str, value: str | None, now: float) -> float | None:
    if value is None:
        return None
    try:
        return parse_when(value, now)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=option) from None


def _read_with_progress(
    log: str | Path, since: float | None, until: float | None, build: Callable[..., Report]
) -> Report:
    rows = count_rows(log, since, until)
    if rows <= PROGRESS_MIN_ROWS:
        return build()
    columns = (
        TextColumn("reading {task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeRemainingColumn(),
    )  # fmt: skip
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task(safe_location(log), total=rows)
        return build(on_batch=lambda n: progress.advance(task, n))


def report(
    log: Annotated[
        str,
        typer.Option(
            "--log", help="Request log: a SQLite file, or postgresql://user@host:port/db."
        ),
    ] = "routegate-requests.sqlite",
    by: Annotated[
        str,
        typer.Option(
            "--by", help="key, team, route, model, api, day, hour, arm (experiments, with tests)."
        ),
    ] = "route",
    since: Annotated[
        str | None, typer.Option(help="From: ISO date/time (UTC) or a span back, e.g. 24h, 7d.")
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="Up to (excluded): ISO date/time or a span back.")
    ] = None,
    policy: Annotated[
        Path | None,
        typer.Option(help="Policy whose prices and routes price the baseline and pacing plans."),
    ] = None,
    baseline: Annotated[
        str | None,
        typer.Option(help="Baseline model for savings; default: each route's dearest model."),
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="table, csv, json or html.")] = "table",
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Write here (needed for html) instead of stdout.")
    ] = None,
) -> None:
    """Spend, requests, tokens, latency, cache, escalation/switching, errors and savings."""
    if by not in GROUPINGS:
        raise typer.BadParameter(f"{by!r}: use one of {', '.join(GROUPINGS)}", param_hint="--by")
    if fmt not in FORMATS:
        raise typer.BadParameter(f"{fmt!r}: use one of {', '.join(FORMATS)}", param_hint="--format")
    if fmt == "html" and out_file is None:
        raise typer.BadParameter("html needs --out FILE", param_hint="--out")
    now = time.time()
    start, end = _when("--since", since, now), _when("--until", until, now)
    policy_path = policy or example_policy_path()
    try:
        loaded = load_policy(policy_path)
    except PolicyError as exc:
        raise _fail(str(exc)) from None
    try:
        location = log if is_postgres_url(log) else Path(log)
        build = partial(
            build_report, location, loaded, str(policy_path), by=by, since=start, until=end,
            baseline=baseline,
        )  # fmt: skip
        result = _read_with_progress(location, start, end, build)
    except ReportError as exc:
        raise _fail(str(exc)) from None

    if fmt == "table":
        if out_file is not None:
            with out_file.open("w", encoding="utf-8") as f:
                Console(file=f, width=200, highlight=False).print(*to_tables(result))
        else:
            out.print(*to_tables(result, out.width))
        return
    text = {"csv": to_csv, "json": to_json, "html": to_html}[fmt](result)
    if out_file is None:
        typer.echo(text, nl=not text.endswith("\n"))
    else:
        out_file.write_text(text, encoding="utf-8")
        err.print(f"report: wrote {out_file} ({result.total['requests']:,} requests)")
