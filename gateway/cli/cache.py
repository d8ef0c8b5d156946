"""`routegate cache ...`: the response cache's offline simulation (see docs/cache.md)."""

from __future__ import annotations

import time
from typing import Annotated

import orjson
import typer
from rich.console import Console
from rich.table import Table

from gateway.cache.replay import SimConfig, SimReport, simulate

cache_app = typer.Typer(help="The response cache: eviction simulations.", no_args_is_help=True)
out = Console(highlight=False)


def _table(report: SimReport) -> Table:
    cfg = report.config
    base = report.baseline().total_cost_usd
    table = Table(
        title=(
            f"{cfg.requests:,} requests over {cfg.queries:,} queries (Zipf {cfg.zipf_alpha}), "
            f"cost ratio {cfg.cost_ratio:g}, cache {report.max_bytes:,} bytes"
        )
    )
    table.add_column("eviction")
    table.add_column("multiplexing")
    table.add_column("hit rate", justify="right")
    table.add_column("total cost (USD)", justify="right")
    table.add_column("vs LRU without", justify="right")
    for r in report.results:
        table.add_row(
            r.eviction.upper(),
            "with" if r.multiplexing else "without",
            f"{r.hit_rate:.1%}",
            f"{r.total_cost_usd:,.2f}",
            f"{r.total_cost_usd / base:.3f}" if base else "-",
        )
    table.caption = (
        f"no cache: {report.no_cache_usd['without']:,.2f} USD without multiplexing, "
        f"{report.no_cache_usd['with']:,.2f} with; the small model suffices for "
        f"{cfg.small_ok:.0%} of queries, the router is right {cfg.router_accuracy:.0%} of the time"
    )
    return table


@cache_app.command("simulate")
def simulate_command(
    queries: Annotated[int, typer.Option(min=1, help="Distinct queries.")] = 10_000,
    requests: Annotated[int, typer.Option(min=1, help="Requests replayed.")] = 100_000,
    zipf_alpha: Annotated[float, typer.Option(min=0.0, help="Zipf exponent of popularity.")] = 0.9,
    cost_ratio: Annotated[
        float, typer.Option(min=1.0, help="Large model price / small model price.")
    ] = 100.0,
    capacity: Annotated[
        str, typer.Option(help="Entries (times the mean answer size), or bytes: 512KB, 2MB.")
    ] = "1000",
    small_ok: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Share of queries the small model suffices for.")
    ] = 0.5,
    router_accuracy: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="How often the multiplexer picks right.")
    ] = 0.9,
    seed: Annotated[int, typer.Option(help="Random seed of the workload.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Replay a Zipf query stream through the cache: total cost of LRU, GDSF and LEC, without
    and with model multiplexing."""
    cfg = SimConfig(
        queries=queries,
        requests=requests,
        zipf_alpha=zipf_alpha,
        cost_ratio=cost_ratio,
        capacity=capacity,
        small_ok=small_ok,
        router_accuracy=router_accuracy,
        seed=seed,
    )
    started = time.perf_counter()
    try:
        report = simulate(cfg)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--capacity") from None
    if as_json:
        typer.echo(orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2).decode())
        return
    out.print(_table(report))
    out.print(f"simulated in {time.perf_counter() - started:.1f} s")
