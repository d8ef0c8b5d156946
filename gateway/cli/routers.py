"""`routegate routers ...`: train router artifacts on routing records and evaluate them offline
by replaying the records (no model is called). This module only parses and prints; the work is
in `routers.offline` (train, evaluate, report)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console

routers_app = typer.Typer(
    help="Train learned routers on routing records and evaluate them offline.",
    no_args_is_help=True,
)
out = Console(highlight=False)
LOG_RECORDS = "log-records.jsonl"  # what `train --from-log` trained on, in the artifact
err = Console(stderr=True, highlight=False)

Data = Annotated[
    list[Path],
    typer.Option(
        "--data",
        help="Routing records (JSONL); repeat for several files (their models may differ).",
    ),
]
Descriptions = Annotated[
    list[Path] | None,
    typer.Option(
        "--descriptions", help="Model descriptions (JSON object or JSONL); repeat for several."
    ),
]
OptionalData = Annotated[
    list[Path] | None,
    typer.Option(
        "--data",
        help="Routing records (JSONL); repeat for several files (their models may differ).",
    ),
]
FromLog = Annotated[
    Path | None,
    typer.Option(
        "--from-log",
        help="A request log (SQLite): its requests with a logged prompt and feedback become "
        "the records (one model per query).",
    ),
]
Split = Annotated[
    str, typer.Option("--split", help="query: held-out queries; task: held-out tasks (subjects).")
]


def _fail(message: str) -> typer.Exit:
    typer.echo(message, err=True)  # plain, unwrapped: FILE:LINE stays parseable
    return typer.Exit(1)


def _parse_params(pairs: list[str]) -> dict[str, Any]:
    """`k=v` pairs; values are JSON where they parse (numbers, booleans), else strings."""
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{pair!r}: expected KEY=VALUE", param_hint="--param")
        try:
            params[key] = orjson.loads(value)
        except orjson.JSONDecodeError:
            params[key] = value
    return params


def _descriptions(files: list[Path] | None) -> dict[str, str] | None:
    from routers.records import load_descriptions

    out: dict[str, str] = {}
    for f in files or []:
        out.update(load_descriptions(f))
    return out or None


def _check_split(split: str) -> None:
    if split not in ("query", "task"):
        raise typer.BadParameter(f"{split!r}: use query or task", param_hint="--split")


def _recipe(directory: Path) -> tuple[str, dict[str, Any]]:
    """An artifact's kind and training parameters (what `--recipe` reuses)."""
    from routers.predictors import artifact

    try:
        manifest = artifact.read_manifest(directory)
    except artifact.ArtifactError as exc:
        raise _fail(str(exc)) from None
    params = artifact.trained_params(manifest)
    guard = manifest.get("guard", {}).get("params")
    return manifest["kind"], {**params, **({"guard": guard} if guard else {})}


def _log_records(log: Path) -> Any:
    from gateway.accounting.log_records import records_from_log

    if not log.is_file():
        raise _fail(f"{log}: no such request log")
    try:
        found = records_from_log(log)
    except (ValueError, sqlite3.Error) as exc:
        raise _fail(f"{log}: {exc}") from None
    sources = ", ".join(f"{k} {v}" for k, v in sorted(found.quality_from.items())) or "none"
    typer.echo(  # plain, unwrapped (rich would wrap the path)
        f"{log}: {found.rows} requests -> {len(found.records)} records (quality from: "
        f"{sources}); skipped {found.no_prompt} without a prompt, {found.no_feedback} "
        "without feedback"
        + (
            f"; {found.other_model_feedback} feedback rows on another model ignored"
            if found.other_model_feedback
            else ""
        ),
        err=True,
    )
    if not found.records:
        raise _fail(f"{log}: no request has both a logged prompt and feedback: nothing to use")
    return found


def _records_from_log(log: Path, out_dir: Path) -> Path:
    found = _log_records(log)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / LOG_RECORDS
    path.write_bytes(found.jsonl())
    return path


@routers_app.command("train")
def train(
    out_dir: Annotated[Path, typer.Option("--out", help="Artifact directory to write.")],
    router: Annotated[
        str | None, typer.Option("--router", help="complexity, graph, knn or mf.")
    ] = None,
    data: OptionalData = None,
    from_log: FromLog = None,
    recipe: Annotated[
        Path | None,
        typer.Option(
            "--recipe",
            help="An artifact directory whose kind and training parameters to reuse "
            "(e.g. the shipped router); --router and --param override them.",
        ),
    ] = None,
    descriptions: Descriptions = None,
    seed: Annotated[int, typer.Option(help="Training seed (and the split's).")] = 0,
    test_fraction: Annotated[
        float, typer.Option(help="Share held out of training (0: train on all).")
    ] = 0.0,
    split: Split = "query",
    param: Annotated[
        list[str] | None, typer.Option("--param", help="Training parameter KEY=VALUE (repeat).")
    ] = None,
) -> None:
    """Train a router on routing records (or on the request log's prompts and feedback) and
    save it as an artifact."""
    from routers.offline.train import TrainingError, train_artifact

    _check_split(split)
    params = _parse_params(param or [])
    if not 0 <= test_fraction < 1:
        raise typer.BadParameter("must be in [0, 1)", param_hint="--test-fraction")
    if bool(data) == (from_log is not None):
        raise typer.BadParameter("give --data or --from-log (one of them)", param_hint="--data")
    if recipe is not None:
        kind, recipe_params = _recipe(recipe)
        router, params = router or kind, {**recipe_params, **params}
    if router is None:
        raise typer.BadParameter("name a router kind (or a --recipe)", param_hint="--router")
    if from_log is not None:
        # The log's records are written next to the artifact: its manifest names and hashes
        # them like any records file, and `routers eval` can read them again.
        data = [_records_from_log(from_log, out_dir)]
    assert data is not None
    try:
        run = train_artifact(
            router,
            data,
            out_dir,
            descriptions=descriptions,
            seed=seed,
            test_fraction=test_fraction,
            split=split,
            params=params,
            progress=lambda msg: err.print(msg),
        )
    except TrainingError as exc:
        raise _fail(str(exc)) from None
    out.print(f"{router} router -> {out_dir}")
    out.print(f"  models:  {', '.join(run.predictor.models)}")
    held_text = f" ({run.held_out} held out by {split})" if run.held_out else ""
    out.print(f"  queries: {run.trained_on} trained on{held_text}")
    out.print(f"  params:  {orjson.dumps(run.predictor.params).decode()}")
    out.print(f"  time:    {run.seconds:.1f}s")


@routers_app.command("distill-encoder")
def distill_encoder(
    out_dir: Annotated[Path, typer.Option("--out", help="Directory to write the encoder to.")],
    dims: Annotated[int, typer.Option(help="Vector dimensions (PCA components).")] = 64,
) -> None:
    """Distil the static encoder from the shipped MiniLM weights (what the routers'
    `encoder=minilm-static` loads from routers/artifacts/encoders/minilm-static)."""
    from routers.offline.distill import distill_encoder as run

    if not 8 <= dims <= 384:
        raise typer.BadParameter("must be in [8, 384]", param_hint="--dims")
    out.print(f"static encoder ({dims} dimensions) -> {run(out_dir, dims)}")


@routers_app.command("fit-contexts")
def fit_contexts(
    directory: Annotated[Path, typer.Argument(help="Router artifact directory.")],
    data: Data,
    k: Annotated[int, typer.Option("--k", help="Number of query contexts.")] = 32,
    seed: Annotated[int, typer.Option(help="k-means seed.")] = 0,
) -> None:
    """Fit the query contexts an online layer learns in (k-means on the router's embedding of
    its training queries) and write them into the artifact (`routers train` does it too)."""
    import numpy as np

    from policies.artifact_manifest import ArtifactError, read_manifest
    from routers.predictors import artifact, contexts, embedding
    from routers.predictors.base import Queries
    from routers.records import RecordTable

    if k < 1:
        raise typer.BadParameter("must be at least 1", param_hint="--k")
    try:
        manifest = read_manifest(directory)
    except ArtifactError as exc:
        raise _fail(f"{directory}: {exc}") from None
    table = RecordTable.load_many(list(data))
    trained = artifact.train_query_ids(directory)
    if trained:  # the queries the router was trained on, when it says which
        rows = [i for i, q in enumerate(table.query_ids) if q in trained]
        if not rows:
            raise _fail(f"{directory}: none of its training queries is in --data")
        table = table.subset(np.array(rows))
    encoder = embedding.encoder_of(artifact.trained_params(manifest))
    fitted = contexts.fit(Queries.from_table(table), encoder, k=k, seed=seed)
    path = contexts.save(fitted, directory)
    out.print(f"{fitted.count} contexts of {len(table)} queries ({encoder}) -> {path}")


@routers_app.command("eval")
def evaluate(
    routers: Annotated[
        list[str],
        typer.Option("--routers", help="Router artifact directories, comma-separated (repeat)."),
    ],
    seeds: Annotated[int, typer.Option(help="Number of random splits (seeds 0..N-1).")] = 5,
    test_fraction: Annotated[float, typer.Option(help="Share of queries held out.")] = 0.3,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write curves and metrics here.")
    ] = None,
    plot_out: Annotated[
        Path | None, typer.Option("--plot", help="Write the quality-cost plot (PNG) here.")
    ] = None,
    descriptions: Descriptions = None,
    split: Split = "query",
    as_is: Annotated[
        bool,
        typer.Option(
            "--as-is",
            help="Judge the saved artifacts themselves on queries none trained on; with "
            "--descriptions, models they do not know join from their descriptions.",
        ),
    ] = False,
    by_task: Annotated[
        bool, typer.Option("--by-task", help="Also print a table per task (the JSON has it).")
    ] = False,
    leave_one_llm_out: Annotated[
        bool,
        typer.Option(
            "--leave-one-llm-out",
            help="Leave each model out in turn: AIQ without it, with it by description, "
            "retrained with its records, and the oracle's gain it brings.",
        ),
    ] = False,
    lambdas: Annotated[int, typer.Option(help="Lambda grid size (x2, plus ends).")] = 100,
    data: OptionalData = None,
    from_log: FromLog = None,
    lam: Annotated[
        list[float] | None,
        typer.Option(
            "--lambda",
            help="With --from-log: the lambdas (quality per USD) to judge at (repeat; default 0).",
        ),
    ] = None,
) -> None:
    """Replay the records: train each router's kind afresh per seed, judge on held-out queries.
    With --from-log: judge the artifacts as they are on the log's records (one model per query:
    only the queries where a router picks the logged model count)."""
    from routers.offline import evaluate as ev
    from routers.offline import new_models, report
    from routers.predictors import artifact
    from routers.records import RecordError, RecordTable

    _check_split(split)
    if seeds < 1:
        raise typer.BadParameter("must be at least 1", param_hint="--seeds")
    if not 0 < test_fraction < 1:
        raise typer.BadParameter("must be in (0, 1)", param_hint="--test-fraction")
    dirs = [d.strip() for item in routers for d in item.split(",") if d.strip()]
    if bool(data) == (from_log is not None):
        raise typer.BadParameter("give --data or --from-log (one of them)", param_hint="--data")
    if from_log is not None:
        _evaluate_log(from_log, dirs, lam or [0.0], json_out)
        return
    assert data is not None
    if leave_one_llm_out and as_is:
        raise typer.BadParameter("retrains per model: not with --as-is", param_hint="--as-is")
    try:
        recipes = ev.load_recipes(dirs)
        table = RecordTable.load_many(data)
        desc = _descriptions(descriptions)
    except (RecordError, artifact.ArtifactError) as exc:
        raise _fail(str(exc)) from None
    # Piped or logged output keeps whole rows rather than the 80 columns rich assumes.
    wide = out if out.is_terminal else Console(highlight=False, width=220)
    try:
        if leave_one_llm_out:
            results = new_models.leave_one_llm_out(
                table,
                recipes,
                descriptions=desc,
                seeds=list(range(seeds)),
                test_fraction=test_fraction,
                n_lambdas=lambdas,
                progress=lambda msg: err.print(msg),
            )
        else:
            results = ev.evaluate(
                table,
                recipes,
                seeds=list(range(seeds)),
                test_fraction=test_fraction,
                split=split,
                descriptions=desc,
                as_is=as_is,
                n_lambdas=lambdas,
                progress=lambda msg: err.print(msg),
            )
    except (ValueError, KeyError, TypeError, ImportError, artifact.ArtifactError) as exc:
        raise _fail(f"error: {exc}") from None
    if leave_one_llm_out:
        for piece in results["slices"]:
            wide.print(new_models.table(piece))
        _write_json(results, json_out)
        return
    for piece in results["slices"]:
        wide.print(report.results_table(results, piece))
        if by_task:
            wide.print(report.by_task_table(results, piece))
    _write_json(results, json_out)
    if plot_out is not None:
        out.print(f"plot: {report.plot(results, plot_out)}")


def _evaluate_log(log: Path, dirs: list[str], lambdas: list[float], json_out: Path | None) -> None:
    from rich.table import Table

    from routers.offline.logged_replay import evaluate_artifacts
    from routers.predictors import artifact
    from routers.records import RecordTable

    if any(x < 0 for x in lambdas):
        raise typer.BadParameter("must be 0 or more", param_hint="--lambda")
    table = RecordTable.from_records(_log_records(log).records)
    try:
        results = evaluate_artifacts(table, dirs, lambdas)
    except (ValueError, KeyError, TypeError, ImportError, artifact.ArtifactError) as exc:
        raise _fail(f"error: {exc}") from None
    out.print(
        f"{results['judged']} of {results['queries']} logged queries judged "
        f"({results['trained_on']} left out: a router trained on them)"
    )
    for model, seen in results["models"].items():
        out.print(
            f"  logged {model}: {seen['records']} records, quality {seen['quality']:.3f}, "
            f"cost ${seen['cost']:.6f}"
        )
    grid = Table(title="routers on the log (matched: the router picked the logged model)")
    for column in ("lambda", "router", "matched", "quality", "quality (ips)", "cost", "picks"):
        grid.add_column(column, justify="left" if column in ("router", "picks") else "right")
    for i, lam_value in enumerate(lambdas):
        for name, entry in results["routers"].items():
            points = entry.get("points")
            if points is None:
                grid.add_row(f"{lam_value:g}", name, "-", "knows none of the logged models")
                continue
            p = points[i]
            picks = ", ".join(f"{m} {v:.0%}" for m, v in p["shares"].items() if v)
            grid.add_row(
                f"{lam_value:g}",
                name,
                f"{p['matched']}/{p['n']}",
                "-" if p["quality"] is None else f"{p['quality']:.3f}",
                "-" if p["quality_ips"] is None else f"{p['quality_ips']:.3f}",
                "-" if p["cost"] is None else f"${p['cost']:.6f}",
                picks,
            )
    (out if out.is_terminal else Console(highlight=False, width=220)).print(grid)
    _write_json(results, json_out)


def _write_json(results: dict[str, Any], path: Path | None) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(results, option=orjson.OPT_SERIALIZE_NUMPY))
    out.print(f"curves and metrics: {path}")
