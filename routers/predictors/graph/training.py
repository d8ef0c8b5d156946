"""Training the graph predictor's network: masked-edge training, full batch, with early stopping
on validation queries that stand exactly where a new query stands at inference."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F
from torch_geometric.data import HeteroData

from routers.predictors.base import torch_threads
from routers.predictors.embedding import DEFAULT_ENCODER
from routers.predictors.graph.building import Graph, sim_edges
from routers.predictors.graph.layers import GraphNet, build_net
from routers.predictors.graph.schema import LLM, QUERY

DEFAULTS: dict[str, Any] = {
    "encoder": DEFAULT_ENCODER,
    "hidden": 32,
    "layers": 2,
    "epochs": 400,  # at most: early stopping on a validation share of the training queries
    "lr": 0.01,
    "weight_decay": 1e-4,
    "dropout": 0.2,
    # Dropout on the query's input features while training: the embedding alone could learn
    # the training queries by heart, and the prediction should lean on the neighbours too.
    "input_dropout": 0.7,
    "mask_ratio": 0.3,  # share of training queries whose LLM edges are hidden, per epoch
    "no_task": 0.15,  # share of those targets that also lose their task edge
    "fresh_task": 0.1,  # share of tasks that lose their members' edges, per epoch
    "fresh_llm": 0.2,  # chance that an LLM loses all its edges, per epoch
    "cost_weight": 0.5,
    "val_fraction": 0.1,
    "patience": 40,
    "ema": 0.9,  # decay of the moving average of the weights (0: none)
    "lexical": False,  # append routers.predictors.features.lexical_features to the query features
    # Each query's k most similar training queries (0: none), as similarity edges in the GNN
    # and as the edge head's neighbourhood quality.
    "neighbours": 30,
    "similarity_edges": True,
    "neighbour_quality": True,
    # Intra-op threads while training. The graph is small: one thread avoids the threads'
    # synchronisation (8x faster on a busy 2-core machine) and makes the result independent
    # of the machine's core count.
    "threads": 1,
}


def training_params(params: dict[str, Any]) -> dict[str, Any]:
    """DEFAULTS overridden by `params`; what training recorded about itself in an artifact's
    params (its findings, the descriptions) is dropped, an unknown key is a TypeError."""
    params = {k: v for k, v in params.items() if k not in ("training", "descriptions")}
    unknown = set(params) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown graph router parameters: {', '.join(sorted(unknown))}")
    return {**DEFAULTS, **params}


def fit(
    graph: Graph,
    cross: tuple[np.ndarray, np.ndarray],
    p: dict[str, Any],
    seed: int,
    extra: int,
) -> tuple[GraphNet, dict[str, Any], np.ndarray]:
    """A network built for `graph` (its query features end in `extra` columns) and trained on
    it with the seed, on `p["threads"]` threads; also what training found and the validation
    rows (see `train_net`)."""
    # Dropout and init draw from the global generator: seeded here, restored afterwards.
    with torch_threads(int(p["threads"])), torch.random.fork_rng():
        torch.manual_seed(seed)
        query_dim, node_dim = graph.x_query.shape[1], graph.x_task.shape[1]
        net = build_net(p, query_dim, node_dim, extra, int(p["neighbours"]))
        info, val_rows = train_net(net, graph, cross, p, seed)
    return net, info, val_rows


def train_net(
    net: GraphNet,
    g: Graph,
    cross: tuple[np.ndarray, np.ndarray],
    p: dict[str, Any],
    seed: int,
) -> tuple[dict[str, Any], np.ndarray]:
    """Masked-edge training, full batch; keeps the state with the best validation loss.
    `cross`: each query's nearest training queries of other tasks, the neighbours of a query
    whose task is treated as never seen. Returns what training found (for the manifest) and
    the validation rows."""
    n, n_tasks, n_llms = len(g.x_query), len(g.x_task), len(g.x_llm)
    gen = torch.Generator().manual_seed(seed)
    qi, li, attr = g.pairs()
    tq_all = g.members()
    is_val = torch.zeros(n, dtype=torch.bool)
    n_val = round(n * float(p["val_fraction"])) if n >= 100 else 0
    is_val[torch.randperm(n, generator=gen)[:n_val]] = True
    opt = torch.optim.Adam(
        net.parameters(), lr=float(p["lr"]), weight_decay=float(p["weight_decay"])
    )
    cost_weight = float(p["cost_weight"])
    similarity = bool(p["similarity_edges"]) and g.near_idx.shape[1] > 0
    near = torch.from_numpy(g.near_idx), torch.from_numpy(g.near_sim)
    far = torch.from_numpy(cross[0]), torch.from_numpy(cross[1])
    # Neighbourhood quality of every training pair, from same-task-or-not and from other-task
    # neighbours; a pair's flag drops with its LLM's edges.
    pair_near = torch.from_numpy(g.pair_quality(g.near_idx, g.near_sim))[qi, li]
    pair_far = torch.from_numpy(g.pair_quality(*cross))[qi, li]

    def loss_on(
        model: GraphNet, data: HeteroData, sup: Tensor, pair: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        h = model.encode(data)[-1]
        out = model.edge(h[QUERY][qi[sup]], h[LLM][li[sup]], data[QUERY].x[qi[sup]], pair[sup])
        bce = F.binary_cross_entropy_with_logits(out[:, 0], attr[sup, 0])
        mse = F.mse_loss(out[:, 1], attr[sup, 1])
        return bce + cost_weight * mse, bce, mse

    # Validation: the inference situation exactly (validation queries are receivers only).
    keep_val = ~is_val[tq_all[1]]
    pairs_val = ~is_val[qi]
    qq_val = sim_edges(*near, ~is_val) if similarity else None
    val_data = g.data(
        tq_all,
        tq_all[:, keep_val].flip(0),
        torch.stack([qi, li])[:, pairs_val],
        attr[pairs_val],
        qq_val,
    )
    # The weights' exponential moving average is what validation sees and training keeps: it
    # smooths the noise of the per-epoch masking.
    ema = float(p["ema"])
    avg = copy.deepcopy(net) if ema > 0 else net
    best: tuple[float, int, dict[str, Tensor]] | None = None
    epoch = 0
    for epoch in range(int(p["epochs"])):
        net.train()
        target = (torch.rand(n, generator=gen) < float(p["mask_ratio"])) & ~is_val
        receiver = target | is_val
        no_task = target & (torch.rand(n, generator=gen) < float(p["no_task"]))
        fresh_task = torch.rand(n_tasks, generator=gen) < float(p["fresh_task"])
        fresh_llm = torch.rand(n_llms, generator=gen) < float(p["fresh_llm"])
        tq = tq_all[:, ~no_task[tq_all[1]]]
        qt = tq_all[:, ~receiver[tq_all[1]] & ~fresh_task[tq_all[0]]].flip(0)
        keep = ~receiver[qi] & ~fresh_llm[li]
        # A query of a task treated as never seen hears other tasks' queries only.
        fresh_q = torch.zeros(n, dtype=torch.bool)
        fresh_q[tq_all[1]] = fresh_task[tq_all[0]]
        qq = None
        if similarity:
            idx = torch.where(fresh_q[:, None], far[0], near[0])
            sim = torch.where(fresh_q[:, None], far[1], near[1])
            qq = sim_edges(idx, sim, ~receiver)
        pair = torch.where(fresh_q[qi, None], pair_far, pair_near)
        pair = pair * (~fresh_llm[li])[:, None]
        data = g.data(tq, qt, torch.stack([qi[keep], li[keep]]), attr[keep], qq)
        loss, _, _ = loss_on(net, data, target[qi], pair)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if avg is not net:
            with torch.no_grad():
                for a, b in zip(avg.parameters(), net.parameters(), strict=True):
                    a.lerp_(b, 1.0 - ema)
        if n_val and (epoch % 5 == 4 or epoch == int(p["epochs"]) - 1):
            avg.eval()
            with torch.no_grad():
                val, _, _ = loss_on(avg, val_data, is_val[qi], pair_near)
            if best is None or val.item() < best[0]:
                state = {k: v.detach().clone() for k, v in avg.state_dict().items()}
                best = (val.item(), epoch, state)
            elif epoch - best[1] >= int(p["patience"]):
                break
    net.eval()
    info: dict[str, Any] = {"epochs_run": epoch + 1}
    if avg is not net:
        net.load_state_dict(avg.state_dict())
    if best is not None:
        net.load_state_dict(best[2])
        info.update(best_epoch=best[1] + 1, val_loss=round(best[0], 5))
    # Residual variance of log cost (validation queries, else training): exp of a predicted
    # mean log cost is a median; the lognormal mean adds half the variance.
    with torch.no_grad():
        sup = is_val[qi] if n_val else torch.ones(len(qi), dtype=torch.bool)
        data = val_data if n_val else g.full(similarity)
        _, bce, mse = loss_on(net, data, sup, pair_near)
    info.update(cost_z_var=round(float(mse), 6), quality_bce=round(float(bce), 5))
    return info, np.flatnonzero(is_val.numpy())
