"""`routegate keys ...`: manage virtual keys through a running gateway's admin API.

Going through the gateway (not the store) works the same for the in-process store and Redis.
"""

from __future__ import annotations

from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from gateway.admission.admin_api import MASTER_KEY_ENV

keys_app = typer.Typer(help="Create, list and revoke virtual API keys.", no_args_is_help=True)
out = Console(highlight=False)

Url = Annotated[str, typer.Option("--url", envvar="ROUTEGATE_URL", help="The gateway's base URL.")]
MasterKey = Annotated[
    str,
    typer.Option(
        "--master-key", envvar=MASTER_KEY_ENV, help="The admin master key.", show_default=False
    ),
]


def _call(method: str, url: str, master_key: str, path: str, json: Any = None) -> Any:
    try:
        resp = httpx.request(
            method, url.rstrip("/") + path, json=json, timeout=30,
            headers={"authorization": f"Bearer {master_key}"},
        )  # fmt: skip
    except httpx.HTTPError as exc:
        typer.echo(f"error: cannot reach the gateway at {url}: {exc}", err=True)
        raise typer.Exit(2) from None
    if resp.status_code >= 400:
        try:
            message = resp.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = resp.text
        typer.echo(f"error: {resp.status_code}: {message}", err=True)
        raise typer.Exit(1)
    return resp.json()


def _money(value: float | None) -> str:
    return "-" if value is None else f"${value:,.4f}"


def _table(keys: list[dict[str, Any]]) -> Table:
    table = Table(
        "id", "team", "name", "budget", "spent", "period", "pacing", "rpm", "tpm", "routes",
        "status",
    )  # fmt: skip
    for k in keys:
        table.add_row(
            k["id"], k["team"], k.get("name") or "", _money(k["budget_usd"]),
            _money(k.get("spent_usd")), k["period"],
            k["pacing"]["plan"] if k.get("pacing") else "-",
            str(k["rpm"] or "-"), str(k["tpm"] or "-"),
            ",".join(k["routes"]) if k["routes"] else "all",
            "active" if k["active"] else "revoked",
        )  # fmt: skip
    return table


@keys_app.command("create")
def create(
    team: Annotated[str, typer.Option(help="The team the key belongs to.")],
    url: Url = "http://127.0.0.1:8080",
    master_key: MasterKey = "",
    budget_usd: Annotated[float | None, typer.Option(help="Hard budget per period, USD.")] = None,
    period: Annotated[str, typer.Option(help="day, week, month or total.")] = "month",
    rpm: Annotated[int | None, typer.Option(help="Requests per minute.")] = None,
    tpm: Annotated[int | None, typer.Option(help="Tokens per minute.")] = None,
    routes: Annotated[
        str | None, typer.Option(help="Comma-separated routes/models allowed.")
    ] = None,
    name: Annotated[str | None, typer.Option(help="A label for the key.")] = None,
    pacing: Annotated[
        str | None,
        typer.Option(help="Pace the budget over its period: uniform or weekday."),
    ] = None,
) -> None:
    """Create a key. Its secret is printed once and never stored."""
    allowed = [r.strip() for r in routes.split(",") if r.strip()] if routes else None
    spec = {
        "team": team, "name": name, "budget_usd": budget_usd, "period": period, "rpm": rpm,
        "tpm": tpm, "routes": allowed, "pacing": pacing,
    }  # fmt: skip
    key = _call("POST", url, master_key, "/admin/keys", spec)
    out.print(_table([key]))
    out.print("secret (shown once, store it now):")
    typer.echo(key["secret"])


@keys_app.command("list")
def list_keys(url: Url = "http://127.0.0.1:8080", master_key: MasterKey = "") -> None:
    """List keys with their spend in the current period."""
    out.print(_table(_call("GET", url, master_key, "/admin/keys")["data"]))


@keys_app.command("revoke")
def revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (key_...).")],
    url: Url = "http://127.0.0.1:8080",
    master_key: MasterKey = "",
) -> None:
    """Revoke a key: requests with it get 401 from now on."""
    key = _call("DELETE", url, master_key, f"/admin/keys/{key_id}")
    out.print(f"revoked {key['id']} (team {key['team']})")
