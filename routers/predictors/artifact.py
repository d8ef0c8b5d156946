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
from routers.predictors.base import Predictor

_LIBRARIES = ("numpy", "scikit-learn", "torch", "torch-geometric", "sentence-transformers")


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
    extra: dict[str, Any] | None = None,
) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    weights = predictor.save_weights(out)
    # The training queries are kept so that evaluation never judges an artifact on them.
    (out / "train_query_ids.txt").write_text("\n".join(train_query_ids) + "\n")
    manifest = {
        "format_version": FORMAT_VERSION,
        "kind": predictor.kind,
        "models": predictor.models,
        "params": predictor.params,
        "seed": seed,
        "weights": weights,
        "data": {"path": data_path, "sha256": data_sha256, "train_queries": len(train_query_ids)},
        "libraries": library_versions(),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **(extra or {}),
    }
    (out / MANIFEST).write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    return out


def load(directory: str | Path) -> Predictor:
    manifest = read_manifest(directory)
    return predictor_class(manifest["kind"]).load_weights(Path(directory), manifest)


def train_query_ids(directory: str | Path) -> set[str]:
    path = Path(directory) / "train_query_ids.txt"
    return set(path.read_text().split()) if path.exists() else set()


def predictor_class(kind: str) -> Any:
    target = KINDS.get(kind)
    if target is None:
        raise ArtifactError(f"unknown router kind {kind!r}: use one of {', '.join(KINDS)}")
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)
