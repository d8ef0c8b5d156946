"""The complexity router: per-model answer-quality predictors on what the query looks like.

Features are the query's sentence embedding (all-MiniLM-L6-v2) and cheap lexical features
(length, code, maths, question type). For each model a logistic regression predicts whether
its answer will be good (quality >= 0.5 in the records; graded qualities weigh the two
classes), and a Platt scaling fitted on out-of-fold scores calibrates the probability, so
predicted qualities of different models can be compared with each other and with cost.

The fitted coefficients are plain arrays: the artifact is an `.npz`, not a pickle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from routers.predictors import CostModel, Queries
from routers.records import RecordTable

WEIGHTS = "complexity.npz"
DEFAULTS: dict[str, Any] = {"C": 0.5, "folds": 5, "lexical": True}


def query_features(queries: Queries, lexical: bool) -> np.ndarray:
    parts = [queries.ensure_embeddings()]
    if lexical:
        from routers.features import lexical_features

        parts.append(lexical_features(queries.texts))
    return np.hstack(parts).astype(np.float64)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _platt(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> tuple[float, float]:
    """a, b with P(good) = sigmoid(a * score + b), fitted on out-of-fold scores."""
    fit = LogisticRegression(C=1e6, max_iter=1000)
    fit.fit(scores.reshape(-1, 1), labels, sample_weight=weights)
    return float(fit.coef_[0, 0]), float(fit.intercept_[0])


class ComplexityRouter:
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
    ):
        self.models = models
        self.params = params
        self._mean, self._scale = mean, scale
        self._coef, self._intercept, self._platt = coef, intercept, platt
        self._cost = cost_model
        self._column = {m: j for j, m in enumerate(models)}

    @classmethod
    def train(
        cls,
        table: RecordTable,
        *,
        seed: int = 0,
        descriptions: dict[str, str] | None = None,
        **params: Any,
    ) -> ComplexityRouter:
        p = {**DEFAULTS, **params}
        x_all = query_features(Queries.from_table(table), bool(p["lexical"]))
        mean = x_all.mean(axis=0)
        scale = x_all.std(axis=0) + 1e-6
        x_all = (x_all - mean) / scale
        n_features = x_all.shape[1]
        coef = np.zeros((len(table.models), n_features))
        intercept = np.zeros(len(table.models))
        platt = np.zeros((len(table.models), 2))
        for j in range(len(table.models)):
            seen = ~np.isnan(table.quality[:, j])
            x, q = x_all[seen], table.quality[seen, j]
            # Graded quality q counts as a good answer with weight q and a bad one with 1 - q.
            xx = np.vstack([x, x])
            yy = np.r_[np.ones(len(q)), np.zeros(len(q))]
            ww = np.r_[q, 1 - q]
            keep = ww > 0
            xx, yy, ww = xx[keep], yy[keep], ww[keep]
            if len(np.unique(yy)) < 2:  # a model always right (or wrong) in the data
                intercept[j] = 20.0 if yy[0] == 1 else -20.0
                platt[j] = (1.0, 0.0)
                continue
            oof = np.zeros(len(yy))
            folds = StratifiedKFold(int(p["folds"]), shuffle=True, random_state=seed)
            for fit_idx, held_idx in folds.split(xx, yy):
                lr = LogisticRegression(C=float(p["C"]), max_iter=2000)
                lr.fit(xx[fit_idx], yy[fit_idx], sample_weight=ww[fit_idx])
                oof[held_idx] = lr.decision_function(xx[held_idx])
            platt[j] = _platt(oof, yy, ww)
            lr = LogisticRegression(C=float(p["C"]), max_iter=2000)
            lr.fit(xx, yy, sample_weight=ww)
            coef[j], intercept[j] = lr.coef_[0], lr.intercept_[0]
        return cls(list(table.models), p, mean, scale, coef, intercept, platt, CostModel.fit(table))

    def _columns(self, models: list[str]) -> list[int]:
        missing = [m for m in models if m not in self._column]
        if missing:
            raise KeyError(
                f"the complexity router was not trained on {', '.join(missing)}; "
                f"it knows {', '.join(self.models)}"
            )
        return [self._column[m] for m in models]

    def predict_quality(self, queries: Queries, models: list[str]) -> np.ndarray:
        cols = self._columns(models)
        x = (query_features(queries, bool(self.params["lexical"])) - self._mean) / self._scale
        scores = x @ self._coef[cols].T + self._intercept[cols]
        a, b = self._platt[cols, 0], self._platt[cols, 1]
        return _sigmoid(a * scores + b)

    def predict_cost(self, queries: Queries, models: list[str]) -> np.ndarray:
        return self._cost.predict(queries, models)

    def save_weights(self, out: Path) -> dict[str, Any]:
        np.savez(
            out / WEIGHTS,
            mean=self._mean,
            scale=self._scale,
            coef=self._coef,
            intercept=self._intercept,
            platt=self._platt,
        )
        return {"file": WEIGHTS, "cost_model": self._cost.to_json()}

    @classmethod
    def load_weights(cls, directory: Path, manifest: dict[str, Any]) -> ComplexityRouter:
        weights = manifest["weights"]
        with np.load(directory / weights["file"], allow_pickle=False) as w:
            return cls(
                list(manifest["models"]),
                dict(manifest["params"]),
                w["mean"],
                w["scale"],
                w["coef"],
                w["intercept"],
                w["platt"],
                CostModel.from_json(weights["cost_model"]),
            )
