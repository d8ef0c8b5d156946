"""The kNN baseline predictor ("knn"): a query's predicted quality per model is the
similarity-weighted mean quality of its k nearest training queries (cosine of sentence
embeddings). Cost comes from the shared `CostModel`; the weights are one `.npz`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from routers.predictors import weights
from routers.predictors.base import CostModel, Queries, check_params, model_columns, unit_rows
from routers.predictors.embedding import DEFAULT_ENCODER
from routers.records import RecordTable

WEIGHTS = "knn.npz"
DEFAULTS: dict[str, Any] = {"encoder": DEFAULT_ENCODER, "k": 40, "weighting": "similarity"}


class KnnPredictor:
    kind: ClassVar[str] = "knn"

    def __init__(
        self,
        models: list[str],
        params: dict[str, Any],
        embeddings: np.ndarray,  # [n_train, dim], unit length
        quality: np.ndarray,  # [n_train, n_models], NaN where unobserved
        cost_model: CostModel,
    ):
        self.models = models
        self.params = params
        # Kept at float16 precision, as saved, so a loaded artifact predicts exactly the same.
        self._emb = unit_rows(np.asarray(embeddings, dtype=np.float16).astype(np.float32))
        self._quality = np.asarray(quality, dtype=np.float32)
        self._cost = cost_model
        self._column = {m: j for j, m in enumerate(models)}
        observed = ~np.isnan(self._quality)
        # A model none of the neighbours was tried on falls back to its overall mean.
        self._prior = np.where(
            observed.any(axis=0),
            np.nansum(np.nan_to_num(self._quality), axis=0) / np.maximum(observed.sum(axis=0), 1),
            0.5,
        )

    @classmethod
    def train(
        cls,
        table: RecordTable,
        *,
        seed: int = 0,
        descriptions: dict[str, str] | None = None,
        **params: Any,
    ) -> KnnPredictor:
        p = check_params(DEFAULTS, params, cls.kind)
        if int(p["k"]) < 1 or p["weighting"] not in ("similarity", "uniform"):
            raise ValueError("knn needs k >= 1 and weighting 'similarity' or 'uniform'")
        p["k"] = int(p["k"])
        emb = Queries.from_table(table).ensure_embeddings(p["encoder"])
        return cls(list(table.models), p, emb, table.quality, CostModel.fit(table))

    def predict_quality(self, queries: Queries, models: list[str]) -> np.ndarray:
        cols = model_columns(self._column, models, self.kind)
        emb = unit_rows(queries.ensure_embeddings(self.params["encoder"]))
        k = min(int(self.params["k"]), len(self._emb))
        quality = self._quality[:, cols]
        observed = ~np.isnan(quality)
        filled = np.nan_to_num(quality)
        out = np.empty((len(emb), len(cols)))
        for start in range(0, len(emb), 1024):  # bounded memory: 1024 x n_train similarities
            sims = emb[start : start + 1024] @ self._emb.T
            idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]
            if self.params["weighting"] == "similarity":
                w = np.maximum(np.take_along_axis(sims, idx, axis=1), 1e-6)
            else:
                w = np.ones(idx.shape, np.float32)
            w_obs = w[:, :, None] * observed[idx]  # [b, k, m]
            total = w_obs.sum(axis=1)
            mean = (w_obs * filled[idx]).sum(axis=1) / np.maximum(total, 1e-12)
            out[start : start + 1024] = np.where(total > 0, mean, self._prior[cols])
        return out

    def predict_cost(self, queries: Queries, models: list[str]) -> np.ndarray:
        model_columns(self._column, models, self.kind)
        return self._cost.predict(queries, models)

    def save_weights(self, out: Path) -> dict[str, Any]:
        arrays = {"embeddings": self._emb.astype(np.float16), "quality": self._quality}
        weights.save_arrays(out / WEIGHTS, arrays, compressed=True)
        return {"file": WEIGHTS, "cost_model": self._cost.to_json()}

    @classmethod
    def load_weights(cls, directory: Path, manifest: dict[str, Any]) -> KnnPredictor:
        files = manifest["weights"]
        w = weights.load_arrays(directory / files["file"])
        return cls(
            list(manifest["models"]),
            dict(manifest["params"]),
            w["embeddings"],
            w["quality"],
            CostModel.from_json(files["cost_model"]),
        )
