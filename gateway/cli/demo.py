"""`routegate demo models | up`: the demonstration models behind the example policy."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from gateway.cli.serve import serve

demo_app = typer.Typer(
    help="The demonstration models behind the example policy.", no_args_is_help=True
)
out = Console(highlight=False)


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
    """Build the demo models, serve them on vLLM (ports 8101, 8102; the embedding model minilm
    on 8103), then run the gateway."""
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
