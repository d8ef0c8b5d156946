"""Training a router artifact from routing records: what `routegate routers train` runs."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from routers.predictors import artifact, contexts, embedding
from routers.predictors.base import Predictor, Queries
from routers.records import (
    RecordError,
    RecordTable,
    file_sha256,
    load_descriptions,
    source_names,
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
    data: list[Path],
    out: Path,
    *,
    descriptions: list[Path] | None = None,
    seed: int = 0,
    test_fraction: float = 0.0,
    split: str = "query",
    params: dict[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> TrainingRun:
    """Train a predictor of `kind` on the records in the `data` files together (less a
    `test_fraction` held out by `split`, "query" or "task") and save it as an artifact in
    `out`; the manifest names every file and its hash."""
    say = progress or (lambda _msg: None)
    try:
        artifact.predictor_class(kind)
        table = RecordTable.load_many(data)
        desc: dict[str, str] = {}
        for f in descriptions or []:
            desc.update(load_descriptions(f))
    except (RecordError, artifact.ArtifactError) as exc:
        raise TrainingError(str(exc)) from None
    except ImportError as exc:
        raise TrainingError(f"router kind {kind!r} is not available: {exc}") from None
    held = 0
    if test_fraction > 0:
        splitter = split_by_query if split == "query" else split_by_task
        table, test = splitter(table, seed, test_fraction)
        held = len(test)
        # A model whose every record was held out has nothing to learn from: it is left out.
        unseen = [m for j, m in enumerate(table.models) if np.isnan(table.quality[:, j]).all()]
        if unseen:
            say(f"no training record for {', '.join(unseen)}: left out of the router")
            table = table.drop_models(unseen)
    say(f"training {kind} on {len(table)} queries x {len(table.models)} models ...")
    start = time.perf_counter()
    try:
        predictor = artifact.train(kind, table, seed=seed, descriptions=desc or None, params=params)
    except (ValueError, TypeError) as exc:
        raise TrainingError(f"error: {kind}: {exc}") from None
    seconds = time.perf_counter() - start
    artifact.save(
        predictor,
        out,
        data_sha256=file_sha256(data[0]) if len(data) == 1 else "",
        data_path=str(data[0]) if len(data) == 1 else "",
        sources=[
            {
                "path": str(f),
                "sha256": file_sha256(f),
                "queries": sum(1 for s in table.sources or [] if s == name),
            }
            for f, name in zip(data, source_names(data), strict=True)
        ],
        train_query_ids=list(table.query_ids),
        seed=seed,
        extra={"training": {"test_fraction": test_fraction, "split": split, "seconds": seconds}},
    )
    # The query contexts an online layer learns in (routers/predictors/contexts.py).
    encoder = embedding.encoder_of(predictor.params)
    contexts.save(contexts.fit(Queries.from_table(table), encoder, seed=seed), out)
    return TrainingRun(predictor, len(table), held, seconds)
