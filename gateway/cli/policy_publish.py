"""`routegate policy apply`: validate a policy file and publish it to the shared state store."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import typer

from gateway.runtime import policy_version
from gateway.state import (
    PolicyRecord,
    PolicyReport,
    State,
    StateUnavailable,
    is_memory_url,
    open_state,
)
from gateway.state.redis_store import redact_url
from policies.loader import PolicyError, parse_policy, policy_warnings, read_policy_text
from policies.schema import StateConfig

WAIT_POLL_S = 0.2


def publish(file: Path, author: str, note: str, wait_s: float) -> int:
    """The exit status: 0 published (and, when waiting, no replica rejected it), 1 not."""
    if not author.strip():
        typer.echo("error: --author must name who applies the policy", err=True)
        return 1
    try:
        text = read_policy_text(file)
        policy = parse_policy(text, str(file))
    except PolicyError as exc:
        for problem in exc.problems:
            typer.echo(str(problem))  # FILE:LINE:COL field: message, as `policy validate`
        return 1
    for warning in policy_warnings(policy, text, str(file)):
        typer.echo(warning.as_warning())
    config = policy.state
    if is_memory_url(config.url):
        typer.echo(
            f"{file}: state.url is 'memory': one instance, whose policy file is the source. "
            "Edit the file the gateway serves (it reloads it) or use the dashboard's policy "
            "page; `policy apply` needs a shared store (state.url: redis://...).",
            err=True,
        )
        return 1
    record = PolicyRecord(0, text, policy_version(text), author.strip(), time.time(), note)
    try:
        return asyncio.run(_publish(config, record, wait_s))
    except StateUnavailable as exc:
        typer.echo(f"error: {exc}", err=True)
        return 1


async def _publish(config: StateConfig, record: PolicyRecord, wait_s: float) -> int:
    url = config.url
    state = await open_state(
        url,
        prefix=config.prefix,
        connect_timeout_s=config.connect_timeout_s,
        timeout_s=config.timeout_s,
    )
    try:
        policy_id = await state.policy_publish(record)
        typer.echo(f"published v{policy_id} (version {record.version}) to {redact_url(url)}")
        if wait_s <= 0:
            return 0
        reports = await _outcomes(state, policy_id, wait_s)
    finally:
        await state.aclose()
    for r in reports:
        outcome = "loaded" if r.ok else f"REJECTED, still serves v{r.serving_id}: {r.error}"
        typer.echo(f"  {r.replica}: {outcome}")
    return 0 if reports and all(r.ok for r in reports) else 1


async def _outcomes(state: State, policy_id: int, wait_s: float) -> list[PolicyReport]:
    """The replicas' outcomes for `policy_id`, once every replica the store knows of has one
    (or after `wait_s`)."""
    deadline = time.monotonic() + wait_s
    while True:
        reports = await state.policy_reports(policy_id)
        known = {r.replica for r in await state.policy_replicas()}
        if (known and known <= {r.replica for r in reports}) or time.monotonic() >= deadline:
            return reports
        await asyncio.sleep(WAIT_POLL_S)
