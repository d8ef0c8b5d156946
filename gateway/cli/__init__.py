"""The `routegate` command: one module per sub-command group."""

from __future__ import annotations

import typer

from gateway.cli.cache import cache_app
from gateway.cli.demo import demo_app
from gateway.cli.keys import keys_app
from gateway.cli.policy import policy_app
from gateway.cli.report import report
from gateway.cli.routers import routers_app
from gateway.cli.serve import serve

app = typer.Typer(help="Routegate: an OpenAI-compatible LLM routing gateway.", no_args_is_help=True)
app.command()(serve)
app.add_typer(policy_app, name="policy")
app.add_typer(demo_app, name="demo")
app.add_typer(keys_app, name="keys")
app.add_typer(routers_app, name="routers")
app.add_typer(cache_app, name="cache")
app.command("report")(report)
