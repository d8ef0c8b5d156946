"""Trainable baseline routers the learned ones are judged against.

- `KnnRouter` ("knn"): a query's predicted quality per model is the similarity-weighted mean
  quality of its k nearest training queries (cosine of sentence embeddings).
- `MatrixFactorisationRouter` ("mf"), after RouteLLM: score(q, m) = w2 . (v_m * (W e_q)) + b_m,
  fitted with a logistic loss on the observed qualities; predicted quality = sigmoid(score).

Both price queries with the shared `CostModel`. Weights are an `.npz` (kNN) or a torch
`state_dict` loaded with `weights_only=True` (MF); hyper-parameters live in the manifest.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from routers.predictors.base import CostModel, Queries
from routers.records import RecordTable

KNN_WEIGHTS = "knn.npz"
MF_WEIGHTS = "mf.pt"
KNN_DEFAULTS: dict[str, Any] = {"k": 40, "weighting": "similarity"}
MF_DEFAULTS: dict[str, Any] = {
    "dim": 32,
    "steps": 300,
    "lr": 0.01,
    "weight_decay": 1e-4,
    "batch_size": 0,  # 0: full batch
}


def _params(defaults: dict[str, Any], given: dict[str, Any], kind: str) -> dict[str, Any]:
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(
            f"unknown {kind} parameter(s) {', '.join(unknown)}; known: {', '.join(defaults)}"
        )
    return {**defaults, **given}


def _columns(column: dict[str, int], models: list[str], kind: str) -> list[int]:
    missing = [m for m in models if m not in column]
    if missing:
        raise KeyError(
            f"the {kind} router was not trained on {', '.join(missing)}; "
            f"it knows {', '.join(column)}"
        )
    return [column[m] for m in models]


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class KnnRouter:
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
        self._emb = _unit(np.asarray(embeddings, dtype=np.float16).astype(np.float32))
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
    ) -> KnnRouter:
        p = _params(KNN_DEFAULTS, params, cls.kind)
        if int(p["k"]) < 1 or p["weighting"] not in ("similarity", "uniform"):
            raise ValueError("knn needs k >= 1 and weighting 'similarity' or 'uniform'")
        p["k"] = int(p["k"])
        emb = Queries.from_table(table).ensure_embeddings()
        return cls(list(table.models), p, emb, table.quality, CostModel.fit(table))

    def predict_quality(self, queries: Queries, models: list[str]) -> np.ndarray:
        cols = _columns(self._column, models, self.kind)
        emb = _unit(queries.ensure_embeddings())
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
        _columns(self._column, models, self.kind)
        return self._cost.predict(queries, models)

    def save_weights(self, out: Path) -> dict[str, Any]:
        np.savez_compressed(
            out / KNN_WEIGHTS, embeddings=self._emb.astype(np.float16), quality=self._quality
        )
        return {"file": KNN_WEIGHTS, "cost_model": self._cost.to_json()}

    @classmethod
    def load_weights(cls, directory: Path, manifest: dict[str, Any]) -> KnnRouter:
        weights = manifest["weights"]
        with np.load(directory / weights["file"], allow_pickle=False) as w:
            return cls(
                list(manifest["models"]),
                dict(manifest["params"]),
                w["embeddings"],
                w["quality"],
                CostModel.from_json(weights["cost_model"]),
            )


def _mf_module(n_models: int, emb_dim: int, dim: int) -> Any:
    import torch
    from torch import nn

    class MF(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model_emb = nn.Embedding(n_models, dim)  # v_m
            self.proj = nn.Linear(emb_dim, dim, bias=False)  # W
            self.head = nn.Linear(dim, 1, bias=False)  # w2
            self.model_bias = nn.Parameter(torch.zeros(n_models))  # b_m

        def forward(self, e: torch.Tensor) -> torch.Tensor:
            """[n, emb_dim] -> [n, n_models] scores (logits)."""
            z = self.proj(e)  # [n, dim]
            prod = z[:, None, :] * self.model_emb.weight[None, :, :]  # [n, m, dim]
            return self.head(prod).squeeze(-1) + self.model_bias

    return MF()


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Small dense steps: one thread is faster than two fighting for busy cores (and keeps the
    result independent of the machine's thread count)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class MatrixFactorisationRouter:
    kind: ClassVar[str] = "mf"

    def __init__(
        self, models: list[str], params: dict[str, Any], net: Any, emb_dim: int, cost: CostModel
    ):
        self.models = models
        self.params = params
        self._net = net.eval()
        self._emb_dim = emb_dim
        self._cost = cost
        self._column = {m: j for j, m in enumerate(models)}

    @classmethod
    def train(
        cls,
        table: RecordTable,
        *,
        seed: int = 0,
        descriptions: dict[str, str] | None = None,
        **params: Any,
    ) -> MatrixFactorisationRouter:
        import torch

        p = _params(MF_DEFAULTS, params, cls.kind)
        p["dim"], p["steps"], p["batch_size"] = int(p["dim"]), int(p["steps"]), int(p["batch_size"])
        p["lr"], p["weight_decay"] = float(p["lr"]), float(p["weight_decay"])
        emb = _unit(Queries.from_table(table).ensure_embeddings())
        torch.manual_seed(seed)
        net = _mf_module(len(table.models), emb.shape[1], p["dim"])
        e = torch.from_numpy(emb)
        target = torch.from_numpy(np.nan_to_num(table.quality).astype(np.float32))
        mask = torch.from_numpy((~np.isnan(table.quality)).astype(np.float32))
        opt = torch.optim.Adam(net.parameters(), lr=p["lr"], weight_decay=p["weight_decay"])
        gen = torch.Generator().manual_seed(seed)
        n = len(emb)
        batch = p["batch_size"] if 0 < p["batch_size"] < n else n
        net.train()
        with _one_thread():
            for _ in range(p["steps"]):
                rows = torch.randperm(n, generator=gen)[:batch] if batch < n else slice(None)
                # Soft targets: a graded quality q is a good answer with probability q.
                loss = torch.nn.functional.binary_cross_entropy_with_logits(
                    net(e[rows]), target[rows], weight=mask[rows], reduction="sum"
                ) / mask[rows].sum().clamp(min=1.0)
                opt.zero_grad()
                loss.backward()
                opt.step()
        return cls(list(table.models), p, net, emb.shape[1], CostModel.fit(table))

    def predict_quality(self, queries: Queries, models: list[str]) -> np.ndarray:
        import torch

        cols = _columns(self._column, models, self.kind)
        emb = _unit(queries.ensure_embeddings())
        with torch.no_grad(), _one_thread():
            logits = self._net(torch.from_numpy(emb))
        return torch.sigmoid(logits).numpy()[:, cols].astype(np.float64)

    def predict_cost(self, queries: Queries, models: list[str]) -> np.ndarray:
        _columns(self._column, models, self.kind)
        return self._cost.predict(queries, models)

    def save_weights(self, out: Path) -> dict[str, Any]:
        import torch

        torch.save(self._net.state_dict(), out / MF_WEIGHTS)
        return {"file": MF_WEIGHTS, "emb_dim": self._emb_dim, "cost_model": self._cost.to_json()}

    @classmethod
    def load_weights(cls, directory: Path, manifest: dict[str, Any]) -> MatrixFactorisationRouter:
        import torch

        weights = manifest["weights"]
        models = list(manifest["models"])
        params = dict(manifest["params"])
        net = _mf_module(len(models), int(weights["emb_dim"]), int(params["dim"]))
        state = torch.load(directory / weights["file"], map_location="cpu", weights_only=True)
        net.load_state_dict(state)
        return cls(
            models, params, net, int(weights["emb_dim"]), CostModel.from_json(weights["cost_model"])
        )
