"""What a trained predictor is: each model's expected answer quality (and cost) for a query.

Every predictor (complexity, graph, kNN, matrix factorisation) implements `Predictor`, plus
the small pieces they share: `Queries`, the linear `CostModel` and parameter/column checks.
The choice itself is the shared objective in `routers.serving.objective`; the evaluator and the
gateway only ever call `predict_quality` and `predict_cost`.

Artifacts are directories written by `routers.predictors.artifact.save`: a `manifest.json`
(kind, format version, models, library versions, data hash, parameters) plus the
predictor's own weight files (`routers.predictors.weights`: never a pickle of code).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from routers.predictors.embedding import REFERENCE_ENCODER
from routers.records import RecordTable


@dataclass
class Queries:
    """A batch of queries to predict for. `tasks` may be None per query (the gateway does not
    know a request's task); `embeddings` are filled once per encoder by `ensure_embeddings`."""

    texts: list[str]
    tasks: list[str | None]
    input_tokens: np.ndarray  # [n] prompt tokens (estimated in the gateway)
    # encoder name -> [n, dim] float32, L2-normalised
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_table(cls, table: RecordTable) -> Queries:
        return cls(list(table.queries), list(table.tasks), table.input_tokens.copy())

    def __len__(self) -> int:
        return len(self.texts)

    def ensure_embeddings(self, encoder: str = REFERENCE_ENCODER) -> np.ndarray:
        """The texts' embeddings by `encoder` (a name in `routers.predictors.embedding`)."""
        vectors = self.embeddings.get(encoder)
        if vectors is None:
            from routers.predictors import embedding

            # Training and evaluation batches are embedded once and kept on disk; a request's
            # handful of texts is not worth a cache file.
            if len(self.texts) > 32:
                vectors = embedding.embed_cached(self.texts, encoder)
            else:
                vectors = embedding.embed(self.texts, encoder)
            self.embeddings[encoder] = vectors
        return vectors


class Predictor(Protocol):
    kind: ClassVar[str]  # "complexity", "graph", "knn", "mf"
    models: list[str]  # the models it was trained on
    params: dict[str, Any]  # training parameters, recorded in the manifest

    @classmethod
    def train(
        cls,
        table: RecordTable,
        *,
        seed: int = 0,
        descriptions: dict[str, str] | None = None,
        **params: Any,
    ) -> Predictor: ...

    def predict_quality(self, queries: Queries, models: list[str]) -> np.ndarray:
        """[n_queries, len(models)] expected quality in 0..1. A model it was not trained on
        raises KeyError unless the predictor can place it (the graph router, from its
        description)."""

    def predict_cost(self, queries: Queries, models: list[str]) -> np.ndarray:
        """[n_queries, len(models)] expected cost in USD, as the training records priced it."""

    def save_weights(self, out: Path) -> dict[str, Any]:
        """Write weight files into `out`; return what the manifest must keep to load them."""

    @classmethod
    def load_weights(cls, directory: Path, manifest: dict[str, Any]) -> Predictor: ...


class CostModel:
    """Per model, cost = a x input_tokens + b, fitted by least squares on the training records.

    Most routers predict only quality and share this for cost; prices in the gateway come from
    the policy instead (the records' prices are facts about the data, not about today).
    """

    def __init__(self, coef: dict[str, tuple[float, float]]):
        self.coef = coef

    @classmethod
    def fit(cls, table: RecordTable) -> CostModel:
        coef: dict[str, tuple[float, float]] = {}
        for j, model in enumerate(table.models):
            ok = ~np.isnan(table.cost[:, j])
            x, y = table.input_tokens[ok], table.cost[ok, j]
            if len(x) >= 2 and np.ptp(x) > 0:
                a, b = np.polyfit(x, y, 1)
            else:
                a, b = 0.0, float(np.mean(y)) if len(y) else 0.0
            coef[model] = (float(a), float(b))
        return cls(coef)

    def predict(self, queries: Queries, models: list[str]) -> np.ndarray:
        out = np.empty((len(queries), len(models)))
        for j, model in enumerate(models):
            a, b = self.coef[model]
            out[:, j] = np.maximum(a * queries.input_tokens + b, 0.0)
        return out

    def to_json(self) -> dict[str, list[float]]:
        return {m: [a, b] for m, (a, b) in self.coef.items()}

    @classmethod
    def from_json(cls, data: dict[str, list[float]]) -> CostModel:
        return cls({m: (float(v[0]), float(v[1])) for m, v in data.items()})


def check_params(defaults: dict[str, Any], given: dict[str, Any], kind: str) -> dict[str, Any]:
    """The defaults overridden by `given`; a key the defaults lack is a ValueError."""
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(
            f"unknown {kind} parameter(s) {', '.join(unknown)}; known: {', '.join(defaults)}"
        )
    return {**defaults, **given}


def model_columns(column: dict[str, int], models: list[str], kind: str) -> list[int]:
    """The trained columns of `models`; a model the predictor was not trained on is a KeyError."""
    missing = [m for m in models if m not in column]
    if missing:
        raise KeyError(
            f"the {kind} router was not trained on {', '.join(missing)}; "
            f"it knows {', '.join(column)}"
        )
    return [column[m] for m in models]


def unit_rows(x: np.ndarray) -> np.ndarray:
    """float32 rows scaled to unit length (a zero row stays zero)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Torch's intra-op threads set to `n` for the block. Predictors' steps are small: one
    thread is faster than two fighting for busy cores, and keeps the result independent of the
    machine's thread count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
