"""Versioned router artifacts: a directory with `manifest.json` and the predictor's weights.

No pickles: weights are numpy `.npz` or torch `state_dict` files, written and read by
`routers.predictors.weights`, so an artifact neither runs code nor breaks when a library's
internals change. The manifest records the library versions and the training data's hash.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import platform
import time
from pathlib import Path
from typing import Any

import orjson

from policies.artifact_manifest import FORMAT_VERSION, MANIFEST, ArtifactError, read_manifest
from routers.data import DEFAULT_DESCRIPTIONS
from routers.predictors import embedding
from routers.predictors.base import Predictor
from routers.predictors.guard import GuardedPredictor
from routers.records import RecordTable, load_descriptions

_LIBRARIES = ("numpy", "scikit-learn", "torch", "torch-geometric", "model2vec", "tokenizers")


# Imported lazily: the gateway loads only the kind its policy names.
KINDS = {
    "complexity": "routers.predictors.complexity:ComplexityPredictor",
    "graph": "routers.predictors.graph.predictor:GraphPredictor",
    "knn": "routers.predictors.knn:KnnPredictor",
    "mf": "routers.predictors.matrix_factorisation:MatrixFactorisationPredictor",
}


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for lib in _LIBRARIES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[lib] = importlib.metadata.version(lib)
    return out


def save(
    predictor: Predictor,
    out: str | Path,
    *,
    data_sha256: str,
    data_path: str,
    train_query_ids: list[str],
    seed: int,
    sources: list[dict[str, Any]] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    weights = predictor.save_weights(out)
    # The training queries are kept so that evaluation never judges an artifact on them.
    (out / "train_query_ids.txt").write_text("\n".join(train_query_ids) + "\n")
    guard = predictor.manifest_section() if isinstance(predictor, GuardedPredictor) else None
    manifest = {
        "format_version": FORMAT_VERSION,
        "kind": predictor.kind,
        # Accepts models known only by a description (the graph router always did).
        "inductive": guard is not None or predictor.kind == "graph",
        "models": predictor.models,
        "params": predictor.params,
        # What embedded the queries, down to the weights' hash: loading checks it.
        "encoder_id": embedding.encoder_id(embedding.encoder_of(predictor.params)),
        "seed": seed,
        "weights": weights,
        **({"guard": guard} if guard is not None else {}),
        "data": {
            "path": data_path,
            "sha256": data_sha256,
            "train_queries": len(train_query_ids),
            # Every records file trained on, with its hash and query count.
            **({"sources": sources} if sources else {}),
        },
        "libraries": library_versions(),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **(extra or {}),
    }
    (out / MANIFEST).write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    return out


def trained_params(manifest: dict[str, Any]) -> dict[str, Any]:
    """The training parameters an artifact was made with. One from before the encoder was a
    parameter names none: it was trained on the transformer."""
    return {"encoder": embedding.LEGACY_ENCODER, **manifest["params"]}


def load(directory: str | Path) -> Predictor:
    manifest = read_manifest(directory)
    manifest["params"] = trained_params(manifest)
    check_encoder_id(manifest)
    inner = predictor_class(manifest["kind"]).load_weights(Path(directory), manifest)
    if "guard" not in manifest:  # an artifact from before the guard
        return inner
    return GuardedPredictor.load(inner, Path(directory), manifest["guard"])


def check_encoder_id(manifest: dict[str, Any]) -> None:
    """A static encoder's vectors change with its weights: a router trained on other ones
    would read them wrongly. (The transformer's id names its precision, which differs by CPU
    with vectors within cosine 0.9999: it is not checked.)"""
    name = embedding.encoder_of(manifest["params"])
    recorded = manifest.get("encoder_id")
    if recorded is None or name == embedding.REFERENCE_ENCODER:
        return
    try:
        embedding.check_encoder(name)
    except ValueError as exc:
        raise ArtifactError(str(exc)) from None
    current = embedding.encoder_id(name)
    if current != recorded:
        raise ArtifactError(
            f"the router was trained on encoder {recorded}, but this install has {current}: "
            "retrain it (routegate routers train)"
        )


def train(
    kind: str,
    table: RecordTable,
    *,
    seed: int = 0,
    descriptions: dict[str, str] | None = None,
    params: dict[str, Any] | None = None,
) -> Predictor:
    """A predictor of `kind` trained on `table`, wearing the out-of-distribution guard
    (`routers.predictors.guard`; `params["guard"]` tunes it, `{"enabled": false}` turns the
    shrinkage off). Descriptions default to the shipped ones for the models they name."""
    params = dict(params or {})
    guard = params.pop("guard", None) or {}
    if not isinstance(guard, dict):
        raise ValueError('the guard parameter takes a JSON object, e.g. guard={"k": 10}')
    if "encoder" in params:
        embedding.check_encoder(params["encoder"])
    known = {**load_descriptions(DEFAULT_DESCRIPTIONS), **(descriptions or {})}
    known = {m: d for m, d in known.items() if m in table.models} or None
    inner = predictor_class(kind).train(table, seed=seed, descriptions=known, **params)
    return GuardedPredictor.fit(inner, table, seed=seed, descriptions=known, **guard)


def train_query_ids(directory: str | Path) -> set[str]:
    path = Path(directory) / "train_query_ids.txt"
    return set(path.read_text().split()) if path.exists() else set()


def predictor_class(kind: str) -> Any:
    target = KINDS.get(kind)
    if target is None:
        raise ArtifactError(f"unknown router kind {kind!r}: use one of {', '.join(KINDS)}")
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)
