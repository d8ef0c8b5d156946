"""The matrix-factorisation baseline predictor ("mf"), after RouteLLM:
score(q, m) = w2 . (v_m * (W e_q)) + b_m, fitted with a logistic loss on the observed
qualities; predicted quality = sigmoid(score). Cost comes from the shared `CostModel`; the
weights are a torch `state_dict`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from routers.predictors import weights
from routers.predictors.base import (
    CostModel,
    Queries,
    check_params,
    model_columns,
    torch_threads,
    unit_rows,
)
from routers.predictors.embedding import DEFAULT_ENCODER
from routers.records import RecordTable

WEIGHTS = "mf.pt"
DEFAULTS: dict[str, Any] = {
    "encoder": DEFAULT_ENCODER,
    "dim": 32,
    "steps": 300,
    "lr": 0.01,
    "weight_decay": 1e-4,
    "batch_size": 0,  # 0: full batch
}


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


class MatrixFactorisationPredictor:
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
    ) -> MatrixFactorisationPredictor:
        import torch

        p = check_params(DEFAULTS, params, cls.kind)
        p["dim"], p["steps"], p["batch_size"] = int(p["dim"]), int(p["steps"]), int(p["batch_size"])
        p["lr"], p["weight_decay"] = float(p["lr"]), float(p["weight_decay"])
        emb = unit_rows(Queries.from_table(table).ensure_embeddings(p["encoder"]))
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
        with torch_threads(1):
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

        cols = model_columns(self._column, models, self.kind)
        emb = unit_rows(queries.ensure_embeddings(self.params["encoder"]))
        with torch.no_grad(), torch_threads(1):
            logits = self._net(torch.from_numpy(emb))
        return torch.sigmoid(logits).numpy()[:, cols].astype(np.float64)

    def predict_cost(self, queries: Queries, models: list[str]) -> np.ndarray:
        model_columns(self._column, models, self.kind)
        return self._cost.predict(queries, models)

    def save_weights(self, out: Path) -> dict[str, Any]:
        weights.save_state(out / WEIGHTS, self._net)
        return {"file": WEIGHTS, "emb_dim": self._emb_dim, "cost_model": self._cost.to_json()}

    @classmethod
    def load_weights(
        cls, directory: Path, manifest: dict[str, Any]
    ) -> MatrixFactorisationPredictor:
        files = manifest["weights"]
        models = list(manifest["models"])
        params = dict(manifest["params"])
        net = _mf_module(len(models), int(files["emb_dim"]), int(params["dim"]))
        net.load_state_dict(weights.load_state(directory / files["file"]))
        return cls(
            models, params, net, int(files["emb_dim"]), CostModel.from_json(files["cost_model"])
        )
