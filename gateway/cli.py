"""The `routegate` command."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from gateway.cache_cli import cache_app
from gateway.keys_cli import keys_app
from gateway.report_cli import report
from gateway.routers_cli import routers_app
from policies.loader import PolicyError, example_policy_path, load_policy

app = typer.Typer(help="Routegate: an OpenAI-compatible LLM routing gateway.", no_args_is_help=True)
policy_app = typer.Typer(help="Check and inspect policy files.", no_args_is_help=True)
demo_app = typer.Typer(
    help="The demonstration models behind the example policy.", no_args_is_help=True
)
app.add_typer(policy_app, name="policy")
app.add_typer(demo_app, name="demo")
app.add_typer(keys_app, name="keys")
app.add_typer(routers_app, name="routers")
app.add_typer(cache_app, name="cache")
app.command("report")(report)

err = Console(stderr=True, highlight=False)
out = Console(highlight=False)


@app.command()
def serve(
    policy: Annotated[
        Path | None, typer.Option(help="Policy YAML; the bundled example policy if omitted.")
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
    log: Annotated[Path, typer.Option("--log", help="SQLite request log.")] = Path(
        "routegate-requests.sqlite"
    ),
    state_file: Annotated[
        Path, typer.Option(help="Keys and spend of the in-process state store (state.url: memory).")
    ] = Path("routegate-state.sqlite"),
    policy_history: Annotated[
        Path | None,
        typer.Option(help="SQLite history of applied policy versions; default: beside --log."),
    ] = None,
    watch: Annotated[bool, typer.Option(help="Reload the policy when its file changes.")] = True,
    access_log: Annotated[bool, typer.Option(help="Log every request line.")] = False,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error.")] = "info",
    forwarded_allow_ips: Annotated[
        str,
        typer.Option(
            help="Proxies (comma-separated IPs, or '*') whose X-Forwarded-For names the client. "
            "Default: none, so a client cannot pick the address its failed logins count to."
        ),
    ] = "",
    header_timeout: Annotated[
        float,
        typer.Option(
            envvar="ROUTEGATE_HEADER_TIMEOUT_S",
            help="Seconds a request line and headers may take to arrive (408 after).",
        ),
    ] = 10.0,
    body_timeout: Annotated[
        float,
        typer.Option(
            envvar="ROUTEGATE_BODY_TIMEOUT_S",
            help="Seconds a request body may take to arrive, from its first read (408 after).",
        ),
    ] = 60.0,
    max_headers: Annotated[
        int, typer.Option(envvar="ROUTEGATE_MAX_HEADERS", help="Request headers allowed (431).")
    ] = 100,
    max_header_bytes: Annotated[
        int,
        typer.Option(
            envvar="ROUTEGATE_MAX_HEADER_BYTES",
            help="Bytes of request line and headers allowed (431).",
        ),
    ] = 32 * 1024,
    keep_alive_timeout: Annotated[
        int,
        typer.Option(
            envvar="ROUTEGATE_KEEP_ALIVE_TIMEOUT_S",
            help="Seconds an idle keep-alive connection stays open.",
        ),
    ] = 5,
) -> None:
    """Run the gateway (one uvicorn worker)."""
    import uvicorn

    from gateway.app import Settings, create_app
    from gateway.http_server import ServerLimits, guarded_protocol

    path = policy or example_policy_path()
    try:
        load_policy(path)  # fail before binding the port, with the validator's messages
    except PolicyError as exc:
        for problem in exc.problems:
            typer.echo(str(problem), err=True)
        raise typer.Exit(1) from None
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("httpx", "watchfiles", "LiteLLM"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    err.print(f"routegate: policy {path} -> http://{host}:{port}/v1  (request log: {log})")
    uvicorn.run(
        create_app(
            Settings(
                policy_path=path,
                log_path=log,
                state_path=state_file,
                watch_policy=watch,
                policy_history_path=policy_history,
                body_timeout_s=body_timeout,
            )
        ),
        host=host,
        port=port,
        loop="uvloop",
        # httptools, with the header limits and timeout uvicorn lacks (gateway/http_server.py).
        http=guarded_protocol(ServerLimits(header_timeout, max_headers, max_header_bytes)),
        timeout_keep_alive=keep_alive_timeout,
        access_log=access_log,
        log_level=log_level,
        timeout_graceful_shutdown=30,
        proxy_headers=bool(forwarded_allow_ips),
        forwarded_allow_ips=forwarded_allow_ips or None,
    )


@policy_app.command("validate")
def policy_validate(
    files: Annotated[list[Path], typer.Argument(help="Policy YAML files.")],
) -> None:
    """Exit 0 if every file is a valid policy; else print FILE:LINE:COL field: message, exit 1."""
    bad = False
    for file in files:
        try:
            policy = load_policy(file)
        except PolicyError as exc:
            bad = True
            # Plain lines, never wrapped: editors and CI parse FILE:LINE:COL.
            for problem in exc.problems:
                typer.echo(str(problem))
            continue
        typer.echo(f"{file}: ok ({len(policy.models)} models, {len(policy.routes)} routes)")
    raise typer.Exit(1 if bad else 0)


@policy_app.command("diff")
def policy_diff(
    old: Annotated[Path, typer.Argument(help="The policy in force.")],
    new: Annotated[Path, typer.Argument(help="The proposed policy.")],
    as_json: Annotated[bool, typer.Option("--json", help="Structured changes as JSON.")] = False,
) -> None:
    """What changes from OLD to NEW, in words (exit 1 if either file is invalid)."""
    import orjson

    from policies.diff import diff_policies

    policies, problems = [], []
    for file in (old, new):
        try:
            policies.append(load_policy(file))
        except PolicyError as exc:
            problems += exc.problems
    if problems:
        for problem in problems:
            typer.echo(str(problem))
        raise typer.Exit(1)
    changes = diff_policies(policies[0], policies[1])
    if as_json:
        listed = [c.as_dict() for c in changes]
        typer.echo(orjson.dumps(listed, option=orjson.OPT_INDENT_2).decode())
        return
    for change in changes:
        typer.echo(change.text)
    if not changes:
        typer.echo(f"No changes between {old} and {new}.")


@policy_app.command("simulate")
def policy_simulate(
    file: Annotated[Path, typer.Argument(help="The candidate policy.")],
    data: Annotated[
        Path, typer.Option("--data", help="Routing records (JSONL) or a request log (SQLite).")
    ],
    current: Annotated[
        Path | None, typer.Option(help="The policy to compare with; default: the example.")
    ] = None,
    route: Annotated[
        str | None, typer.Option(help="Routing records: the route to replay (default: first).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Both simulations as JSON.")] = False,
) -> None:
    """Replay traffic through FILE: its model mix per route and its cost against --current."""
    import orjson

    from policies.simulate import SimulationError, comparison_table, is_request_log, simulate

    current_path = current or example_policy_path()
    try:
        candidate = load_policy(file)
        in_force = load_policy(current_path)
    except PolicyError as exc:
        for problem in exc.problems:
            typer.echo(str(problem))
        raise typer.Exit(1) from None
    try:
        new = simulate(candidate, str(file), data, route)
        name = route or next(iter(candidate.routes), None)
        # Records go to one route: compare only if the current policy has it too.
        comparable = is_request_log(data) or name in in_force.routes
        old = simulate(in_force, str(current_path), data, name) if comparable else None
    except SimulationError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    if as_json:
        both = {"candidate": new.as_dict(), "current": old.as_dict() if old else None}
        typer.echo(orjson.dumps(both, option=orjson.OPT_INDENT_2).decode())
        return
    out.print(comparison_table(new, old))
    for note in [*new.notes, *(old.notes if old else [])]:
        out.print(f"note: {note}")
    if new.skipped:
        out.print(f"{new.skipped:,} rows name a route or model {file} lacks; left out.")


@demo_app.command("models")
def demo_models(
    out_dir: Annotated[Path, typer.Option("--out", help="Where to write them.")] = Path(
        "var/models"
    ),
    force: Annotated[bool, typer.Option(help="Rebuild even if present.")] = False,
) -> None:
    """Generate the two tiny demonstration models (random weights, own tokenizer)."""
    from gateway.demo.tiny_models import build_tiny_models

    for name, folder in build_tiny_models(out_dir, force=force).items():
        out.print(f"{name}: {folder}")


@demo_app.command("up")
def demo_up(
    models_dir: Annotated[Path, typer.Option(help="Model folder.")] = Path("var/models"),
    log_dir: Annotated[Path, typer.Option(help="vLLM server logs.")] = Path("var/logs"),
    host: Annotated[str, typer.Option(help="Gateway address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Gateway port.")] = 8080,
    log: Annotated[Path, typer.Option("--log", help="SQLite request log.")] = Path(
        "routegate-requests.sqlite"
    ),
) -> None:
    """Build the demo models, serve them on vLLM (ports 8101, 8102), then run the gateway."""
    from gateway.demo.vllm_servers import run_demo_servers

    servers = run_demo_servers(models_dir, log_dir)
    try:
        serve(
            policy=None,
            host=host,
            port=port,
            log=log,
            state_file=Path("routegate-state.sqlite"),
            watch=True,
            access_log=False,
            log_level="info",
        )
    finally:
        for server in servers:
            server.stop()


if __name__ == "__main__":
    app()
