"""The complexity predictor: per-model answer-quality predictors on what the query looks like.

Features of a query:
- its sentence embedding (by default MiniLM's static distillation, unit length);
- cheap lexical features (length, code, maths, question type), standardised and scaled down
  so they refine rather than dominate;
- neighbourhood difficulty: for each model, the similarity-weighted mean quality of the `k`
  most similar training queries (out-of-fold in training, so a query never sees itself).
  Embeddings alone tell the subject; the neighbours tell how hard that corner of it was.

For each model a logistic regression predicts a good answer (graded qualities weigh the two
classes), and Platt scaling fitted on out-of-fold scores calibrates it, so predictions of
different models compare with each other and with cost. Measured choices (C, k, the scales)
are in docs/routers.md.

Everything is plain arrays: the weights are one `.npz`, not a pickle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from routers.predictors import weights
from routers.predictors.base import CostModel, Queries, model_columns
from routers.predictors.embedding import DEFAULT_ENCODER
from routers.records import RecordTable

WEIGHTS = "complexity.npz"
DEFAULTS: dict[str, Any] = {
    "encoder": DEFAULT_ENCODER,
    "C": 0.05,
    "folds": 5,
    "lexical": True,
    "lexical_scale": 0.1,
    "neighbours": 40,
    "neighbour_scale": 5.0,
}


def neighbour_quality(
    bank: np.ndarray, quality: np.ndarray, emb: np.ndarray, k: int, exclude_self: bool = False
) -> np.ndarray:
    """[n, n_models]: similarity-weighted mean quality of each query's k nearest bank queries
    (cosine; embeddings are unit length). Missing qualities (NaN) are left out."""
    k = min(k, len(bank) - int(exclude_self))
    out = np.zeros((len(emb), quality.shape[1]))
    if k <= 0:  # a single training query has no neighbour but itself
        return out
    for start in range(0, len(emb), 1024):  # bounded memory for large training sets
        sims = emb[start : start + 1024] @ bank.T
        if exclude_self:
            rows = np.arange(start, min(start + 1024, len(emb)))
            sims[rows - start, rows] = -np.inf
        idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        w = np.maximum(np.take_along_axis(sims, idx, axis=1), 1e-3)[:, :, None]
        q = quality[idx]  # [b, k, m]
        seen = ~np.isnan(q)
        out[start : start + 1024] = (np.where(seen, q, 0) * w).sum(1) / np.maximum(
            (seen * w).sum(1), 1e-9
        )
    return out


def _lexical(queries: Queries) -> np.ndarray:
    from routers.predictors.features import lexical_features

    return lexical_features(queries.texts).astype(np.float64)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _platt(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> tuple[float, float]:
    """a, b with P(good) = sigmoid(a * score + b), fitted on out-of-fold scores."""
    fit = LogisticRegression(C=1e6, max_iter=1000)
    fit.fit(scores.reshape(-1, 1), labels, sample_weight=weights)
    return float(fit.coef_[0, 0]), float(fit.intercept_[0])


class ComplexityPredictor:
    kind: ClassVar[str] = "complexity"

    def __init__(
        self,
        models: list[str],
        params: dict[str, Any],
        mean: np.ndarray,
        scale: np.ndarray,
        coef: np.ndarray,  # [n_models, n_features]
        intercept: np.ndarray,  # [n_models]
        platt: np.ndarray,  # [n_models, 2]
        cost_model: CostModel,
        bank: np.ndarray,  # [n_train, dim] training embeddings, for neighbourhood difficulty
        bank_quality: np.ndarray,  # [n_train, n_models]
    ):
        self.models = models
        self.params = params
        self._mean, self._scale = mean, scale
        self._coef, self._intercept, self._platt = coef, intercept, platt
        self._cost = cost_model
        self._bank, self._bank_quality = bank, bank_quality
        self._column = {m: j for j, m in enumerate(models)}

    @classmethod
    def train(
        cls,
        table: RecordTable,
        *,
        seed: int = 0,
        descriptions: dict[str, str] | None = None,
        **params: Any,
    ) -> ComplexityPredictor:
        p = {**DEFAULTS, **params}
        queries = Queries.from_table(table)
        bank = queries.ensure_embeddings(p["encoder"]).astype(np.float32)
        lexical = _lexical(queries) if p["lexical"] else np.zeros((len(table), 0))
        lex_mean, lex_scale = lexical.mean(axis=0), lexical.std(axis=0) + 1e-6
        predictor = cls(
            list(table.models),
            p,
            lex_mean,
            lex_scale,
            np.zeros(0),
            np.zeros(0),
            np.zeros(0),
            CostModel.fit(table),
            bank,
            table.quality.astype(np.float32),
        )
        x_all = predictor._features(bank, lexical, exclude_self=True)
        n_models = len(table.models)
        coef = np.zeros((n_models, x_all.shape[1]))
        intercept = np.zeros(n_models)
        platt = np.zeros((n_models, 2))
        for j in range(n_models):
            seen = ~np.isnan(table.quality[:, j])
            x, q = x_all[seen], table.quality[seen, j]
            # Graded quality q counts as a good answer with weight q and a bad one with 1 - q.
            xx = np.vstack([x, x])
            yy = np.r_[np.ones(len(q)), np.zeros(len(q))]
            ww = np.r_[q, 1 - q]
            keep = ww > 0
            xx, yy, ww = xx[keep], yy[keep], ww[keep]
            if len(np.unique(yy)) < 2:  # a model always right (or wrong) in the data
                intercept[j] = (20.0 if yy[0] == 1 else -20.0) if len(yy) else 0.0
                platt[j] = (1.0, 0.0)
                continue
            # Each fold needs answers of both kinds: a small file (a short request log) has
            # fewer folds, and with under two of a kind the fit's own scores stand uncalibrated.
            n_folds = min(int(p["folds"]), int(np.bincount(yy.astype(int)).min()))
            if n_folds >= 2:
                oof = np.zeros(len(yy))
                folds = StratifiedKFold(n_folds, shuffle=True, random_state=seed)
                for fit_idx, held_idx in folds.split(xx, yy):
                    lr = LogisticRegression(C=float(p["C"]), max_iter=3000)
                    lr.fit(xx[fit_idx], yy[fit_idx], sample_weight=ww[fit_idx])
                    oof[held_idx] = lr.decision_function(xx[held_idx])
                platt[j] = _platt(oof, yy, ww)
            else:
                platt[j] = (1.0, 0.0)
            lr = LogisticRegression(C=float(p["C"]), max_iter=3000)
            lr.fit(xx, yy, sample_weight=ww)
            coef[j], intercept[j] = lr.coef_[0], lr.intercept_[0]
        predictor._coef, predictor._intercept, predictor._platt = coef, intercept, platt
        return predictor

    def _features(
        self, emb: np.ndarray, lexical: np.ndarray, exclude_self: bool = False
    ) -> np.ndarray:
        p = self.params
        parts = [emb.astype(np.float64)]
        if p["lexical"]:
            parts.append((lexical - self._mean) / self._scale * float(p["lexical_scale"]))
        if int(p["neighbours"]) > 0:
            near = neighbour_quality(
                self._bank, self._bank_quality, emb, int(p["neighbours"]), exclude_self
            )
            parts.append(near * float(p["neighbour_scale"]))
        return np.hstack(parts)

    def predict_quality(self, queries: Queries, models: list[str]) -> np.ndarray:
        cols = model_columns(self._column, models, self.kind)
        emb = queries.ensure_embeddings(self.params["encoder"]).astype(np.float32)
        lexical = _lexical(queries) if self.params["lexical"] else np.zeros((len(queries), 0))
        x = self._features(emb, lexical)
        scores = x @ self._coef[cols].T + self._intercept[cols]
        a, b = self._platt[cols, 0], self._platt[cols, 1]
        return _sigmoid(a * scores + b)

    def predict_cost(self, queries: Queries, models: list[str]) -> np.ndarray:
        return self._cost.predict(queries, models)

    def save_weights(self, out: Path) -> dict[str, Any]:
        arrays = {
            "mean": self._mean,
            "scale": self._scale,
            "coef": self._coef,
            "intercept": self._intercept,
            "platt": self._platt,
            "bank": self._bank.astype(np.float16),  # half the size; neighbours barely move
            "bank_quality": self._bank_quality,
        }
        weights.save_arrays(out / WEIGHTS, arrays)
        return {"file": WEIGHTS, "cost_model": self._cost.to_json()}

    @classmethod
    def load_weights(cls, directory: Path, manifest: dict[str, Any]) -> ComplexityPredictor:
        files = manifest["weights"]
        w = weights.load_arrays(directory / files["file"])
        return cls(
            list(manifest["models"]),
            dict(manifest["params"]),
            w["mean"],
            w["scale"],
            w["coef"],
            w["intercept"],
            w["platt"],
            CostModel.from_json(files["cost_model"]),
            w["bank"].astype(np.float32),
            w["bank_quality"],
        )
