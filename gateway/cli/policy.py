"""`routegate policy validate | diff | simulate | apply`: check a policy file, compare two, and
publish one to the replicas that share a state store (gateway/cli/policy_publish.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from policies.loader import (
    PolicyError,
    example_policy_path,
    load_policy,
    parse_policy,
    policy_warnings,
    read_policy_text,
)

policy_app = typer.Typer(help="Check and inspect policy files.", no_args_is_help=True)
err = Console(stderr=True, highlight=False)
out = Console(highlight=False)


@policy_app.command("validate")
def policy_validate(
    files: Annotated[list[Path], typer.Argument(help="Policy YAML files.")],
) -> None:
    """Exit 0 if every file is a valid policy; else print FILE:LINE:COL field: message, exit 1.

    A valid policy's warnings follow its ok line as FILE:LINE:COL field: warning: message."""
    bad = False
    for file in files:
        try:
            text = read_policy_text(file)
            policy = parse_policy(text, str(file))
        except PolicyError as exc:
            bad = True
            # Plain lines, never wrapped: editors and CI parse FILE:LINE:COL.
            for problem in exc.problems:
                typer.echo(str(problem))
            continue
        typer.echo(f"{file}: ok ({len(policy.models)} models, {len(policy.routes)} routes)")
        for warning in policy_warnings(policy, text, str(file)):
            typer.echo(warning.as_warning())
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
        str,
        typer.Option(
            "--data",
            help="Routing records (JSONL), or a request log: a SQLite file or postgresql://...",
        ),
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

    from gateway.report.policy_simulation import (
        SimulationError,
        comparison_table,
        is_request_log,
        simulate,
    )

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


@policy_app.command("apply")
def policy_apply(
    file: Annotated[
        Path, typer.Argument(help="The policy to publish; its state.url names the store.")
    ],
    author: Annotated[str, typer.Option(help="Who is applying it (kept with the version).")],
    note: Annotated[str, typer.Option(help="Why, in a few words.")] = "",
    wait: Annotated[
        float, typer.Option(help="Seconds to wait for the replicas' outcomes (0: do not wait).")
    ] = 0.0,
) -> None:
    """Validate FILE and publish it to the shared store: every replica loads it within 5 s.

    Prints the published version's id. With the in-process store (state.url: memory) the file
    itself is the source: there is nothing to publish to, and this refuses."""
    from gateway.cli.policy_publish import publish

    raise typer.Exit(publish(file, author, note, wait))
