"""Training a router artifact from routing records: what `routegate routers train` runs."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from routers.predictors import artifact
from routers.predictors.base import Predictor
from routers.records import (
    RecordError,
    RecordTable,
    file_sha256,
    load_descriptions,
    split_by_query,
    split_by_task,
)


class TrainingError(Exception):
    """Training could not start or failed; the message is meant for the user as it is."""


@dataclass(slots=True)
class TrainingRun:
    predictor: Predictor
    trained_on: int  # queries
    held_out: int  # queries left out by `test_fraction`
    seconds: float


def train_artifact(
    kind: str,
    data: Path,
    out: Path,
    *,
    descriptions: Path | None = None,
    seed: int = 0,
    test_fraction: float = 0.0,
    split: str = "query",
    params: dict[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> TrainingRun:
    """Train a predictor of `kind` on the records in `data` (less a `test_fraction` held out by
    `split`, "query" or "task") and save it as an artifact in `out`."""
    say = progress or (lambda _msg: None)
    try:
        cls = artifact.predictor_class(kind)
        table = RecordTable.load(data)
        desc = load_descriptions(descriptions) if descriptions else None
    except (RecordError, artifact.ArtifactError) as exc:
        raise TrainingError(str(exc)) from None
    except ImportError as exc:
        raise TrainingError(f"router kind {kind!r} is not available: {exc}") from None
    held = 0
    if test_fraction > 0:
        splitter = split_by_query if split == "query" else split_by_task
        table, test = splitter(table, seed, test_fraction)
        held = len(test)
    say(f"training {kind} on {len(table)} queries x {len(table.models)} models ...")
    start = time.perf_counter()
    try:
        predictor = cls.train(table, seed=seed, descriptions=desc, **(params or {}))
    except (ValueError, TypeError) as exc:
        raise TrainingError(f"error: {kind}: {exc}") from None
    seconds = time.perf_counter() - start
    artifact.save(
        predictor,
        out,
        data_sha256=file_sha256(data),
        data_path=str(data),
        train_query_ids=list(table.query_ids),
        seed=seed,
        extra={"training": {"test_fraction": test_fraction, "split": split, "seconds": seconds}},
    )
    return TrainingRun(predictor, len(table), held, seconds)
