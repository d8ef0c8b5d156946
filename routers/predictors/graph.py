"""The graph router, after GraphRouter (Feng et al., ICLR 2025): routing as edge prediction on a
heterogeneous graph of tasks, queries and LLMs.

Nodes: task (the embedding of a description such as "MMLU multiple-choice questions on college
physics"), query (its sentence embedding and standardised log prompt length) and LLM (the
embedding of the model's description). Edges: task-query membership, query-LLM edges that
carry the observed quality and normalised log cost, and similarity edges that link each query
to its `neighbours` most similar training queries (cosine of the embeddings). A two-layer
heterogeneous GNN (per relation a mean of messages, summed over relations, plus a root term)
gives every node a representation: through similarity edges, a query hears what its
neighbours' LLM edges said (query <- similar query <- LLM). An MLP on a (query, LLM) pair
predicts the edge: quality (a logit, BCE) and normalised log cost (MSE). Besides both nodes'
representations it reads the pair's neighbourhood quality: the similarity-weighted mean
quality of the query's neighbours' edges to that LLM, with a flag for "no such edge" (an LLM
known only by its description has none). Model descriptions come from
`train(descriptions=...)`, then `routers/data/default_descriptions.json`, else the model's name.

Training masks edges as in the paper: each epoch a random share of the training queries lose
their LLM edges and become the supervised targets, so the model learns to predict a query it
has no edges for: the situation of every query at inference. Similarity edges only come from
queries that kept theirs (as every training query has at inference). Some targets also lose
their task (the gateway knows none); some tasks lose their members (a task never seen), whose
targets then take their neighbours from other tasks only; and some LLMs lose all their edges,
neighbourhood quality included (a model known only by its description). So each inductive case
is trained. Heavy dropout on the query's input features keeps the embedding from learning the
training queries by heart (then the neighbours would look useless), and validation and the
result use a moving average of the weights, which smooths the per-epoch masking noise.

At inference a new query joins as a receiver only (edges from its task and its nearest training
queries, none to LLMs), so its prediction depends on nothing else in its batch. What it receives
(per layer, the messages of tasks and of training queries) and the LLM representations are
computed once on the training graph and cached: a query then costs a nearest-neighbour search
and a few small matmuls, done in numpy (well under a millisecond for one query).

Cost: the head's estimate, except for a trained model whose validation queries the linear
`CostModel` priced better (records priced per token, like the shipped ones); a model added by
description always gets the head's.
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch_geometric.data import HeteroData
from torch_geometric.nn import HeteroConv, MessagePassing

from routers.data import DEFAULT_DESCRIPTIONS
from routers.predictors.base import CostModel, Queries
from routers.records import RecordTable, load_descriptions

STATE = "graph_state.pt"
GRAPH = "graph.npz"
# How a description-only model is placed (see `_anchored_quality`).
ANCHOR_TEMPERATURE = 0.05
ANCHOR_WEIGHT = 0.8

DEFAULTS: dict[str, Any] = {
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
TASK, QUERY, LLM = "task", "query", "llm"
TQ = (TASK, "contains", QUERY)
QT = (QUERY, "in", TASK)
QL = (QUERY, "answered_by", LLM)
LQ = (LLM, "answered", QUERY)
QQ = (QUERY, "similar_to", QUERY)
EDGE_DIM = 2  # quality, normalised log cost
PAIR_DIM = 2  # neighbourhood quality of the pair, whether there is any
_COST_EPS = 1e-9  # USD, so that a free answer has a finite log cost
_MIN_SIM = 1e-3  # floor of a neighbour's weight: dissimilar neighbours still count a little
_BENCHMARKS = {
    "mmlu": "MMLU multiple-choice questions",
    "gsm8k": "grade-school maths word problems",
    "mbpp": "Python programming problems",
    "humaneval": "Python programming problems",
    "mt_bench": "open-ended multi-turn chat questions",
    "arc": "ARC science multiple-choice questions",
}


def describe_task(task: str) -> str:
    """Text for a task node: "mmlu/college_physics" -> "MMLU multiple-choice questions on
    college physics"."""
    bench, _, subject = task.partition("/")
    name = _BENCHMARKS.get(bench.lower(), f"{bench.replace('_', ' ')} questions")
    subject = subject.replace("_", " ").replace("/", " ").strip()
    return f"{name} on {subject}" if subject else name


# -- neighbours ------------------------------------------------------------------------------


def nearest(
    bank: np.ndarray,
    emb: np.ndarray,
    k: int,
    self_rows: bool = False,
    bank_task: np.ndarray | None = None,
    emb_task: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The k most cosine-similar bank rows of each query (unit vectors), most similar first:
    indices [n, k] int64 and similarities [n, k] float32. `self_rows`: query i is bank row i
    and is left out; with tasks, bank rows of the query's own task are left out."""
    k = min(k, len(bank) - int(self_rows))
    idx = np.zeros((len(emb), max(k, 0)), np.int64)
    sim = np.zeros((len(emb), max(k, 0)), np.float32)
    if k <= 0:
        return idx, sim
    for start in range(0, len(emb), 1024):  # bounded memory for large training sets
        stop = min(start + 1024, len(emb))
        s = emb[start:stop] @ bank.T
        if self_rows:
            rows = np.arange(start, stop)
            s[rows - start, rows] = -np.inf
        if bank_task is not None and emb_task is not None:
            s[emb_task[start:stop, None] == bank_task[None, :]] = -np.inf
        part = np.argpartition(-s, k - 1, axis=1)[:, :k]
        top = np.take_along_axis(s, part, axis=1)
        order = np.lexsort((part, -top), axis=1)  # by similarity, ties by row: deterministic
        idx[start:stop] = np.take_along_axis(part, order, axis=1)
        sim[start:stop] = np.take_along_axis(top, order, axis=1)
    return idx, sim


def _weights(sim: np.ndarray) -> np.ndarray:
    return np.maximum(sim, _MIN_SIM).astype(np.float32)


def pair_quality(idx: np.ndarray, sim: np.ndarray, quality: np.ndarray, n_llms: int) -> np.ndarray:
    """[n, n_llms, 2]: per (query, LLM) the similarity-weighted mean quality of the query's
    neighbours' edges to the LLM (0 if none), and 1 where there is any edge, else 0. LLMs past
    `quality`'s columns (added by description) have none."""
    out = np.zeros((len(idx), n_llms, PAIR_DIM), np.float32)
    if idx.shape[1] == 0 or len(quality) == 0:
        return out
    q = quality[idx]  # [n, k, m]
    seen = ~np.isnan(q)
    w = _weights(sim)[:, :, None] * seen
    total = w.sum(axis=1)
    mean = (np.where(seen, q, 0.0) * w).sum(axis=1) / np.maximum(total, 1e-12)
    m = quality.shape[1]
    out[:, :m, 0] = np.where(total > 0, mean, 0.0)
    out[:, :m, 1] = total > 0
    return out


def _sim_edges(idx: Tensor, sim: Tensor, keep_src: Tensor) -> tuple[Tensor, Tensor]:
    """Similarity edges [2, E] (neighbour, query) from senders `keep_src` only, with weights
    [E, 1] normalised to sum to one per receiving query."""
    n, k = idx.shape
    src, dst = idx.reshape(-1), torch.arange(n).repeat_interleave(k)
    w = torch.clamp(sim.reshape(-1), min=_MIN_SIM)
    keep = keep_src[src]
    src, dst, w = src[keep], dst[keep], w[keep]
    total = torch.zeros(n).index_add_(0, dst, w)
    return torch.stack([src, dst]), (w / total[dst]).unsqueeze(1)


# -- the network -----------------------------------------------------------------------------


class _RelConv(MessagePassing):
    """Mean of the messages along one relation (zero for a node without neighbours). Messages
    that carry edge attributes pass a non-linearity first, so which queries a model got right
    survives the averaging instead of collapsing to mean(query) + mean(quality)."""

    def __init__(self, hidden: int, edge_dim: int = 0):
        super().__init__(aggr="mean")
        self.edge_dim = edge_dim
        self.lin = nn.Linear(hidden + edge_dim, hidden)

    def forward(
        self, x: tuple[Tensor, Tensor], edge_index: Tensor, edge_attr: Tensor | None = None
    ) -> Tensor:
        size = (x[0].size(0), x[1].size(0))
        return self.propagate(edge_index, x=x, edge_attr=edge_attr, size=size)

    def message(self, x_j: Tensor, edge_attr: Tensor | None) -> Tensor:
        if self.edge_dim:
            assert edge_attr is not None
            return F.relu(self.lin(torch.cat([x_j, edge_attr], dim=-1)))
        return self.lin(x_j)


class _SimConv(MessagePassing):
    """Similarity-weighted mean of the neighbours' messages (the weights arrive normalised)."""

    def __init__(self, hidden: int):
        super().__init__(aggr="sum")
        self.lin = nn.Linear(hidden, hidden)

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor) -> Tensor:
        # Transform the nodes, then one sparse product: k times fewer products than per edge,
        # and a cheap backward.
        adj = torch.sparse_coo_tensor(
            edge_index.flip(0), edge_attr[:, 0], (len(x), len(x)), check_invariants=False
        )
        return torch.sparse.mm(adj, self.lin(x))


class _GraphNet(nn.Module):
    """Input projections, `layers` rounds of heterogeneous message passing, and the edge head.

    h0 = input projection; h(l+1)[t] = root_l[t](z_l[t]) + sum over relations into t of the
    relation's mean message of z_l, with z_l = dropout(relu(h_l)). The head reads h_L."""

    def __init__(
        self,
        query_dim: int,
        node_dim: int,
        hidden: int,
        layers: int,
        dropout: float,
        extra: int,
        similarity: bool = False,
        pair: bool = False,
        input_dropout: float = 0.0,
    ):
        super().__init__()
        self.dropout = dropout
        self.extra = extra
        self.pair = PAIR_DIM if pair else 0
        self.input_dropout = input_dropout
        self.inp = nn.ModuleDict(
            {
                QUERY: nn.Linear(query_dim, hidden),
                TASK: nn.Linear(node_dim, hidden),
                LLM: nn.Linear(node_dim, hidden),
            }
        )

        def relations() -> dict[tuple[str, str, str], MessagePassing]:
            rel: dict[tuple[str, str, str], MessagePassing] = {
                TQ: _RelConv(hidden),
                QT: _RelConv(hidden),
                QL: _RelConv(hidden, EDGE_DIM),
                LQ: _RelConv(hidden, EDGE_DIM),
            }
            if similarity:
                rel[QQ] = _SimConv(hidden)
            return rel

        self.convs = nn.ModuleList(HeteroConv(relations(), aggr="sum") for _ in range(layers))
        self.roots = nn.ModuleList(
            nn.ModuleDict({t: nn.Linear(hidden, hidden, bias=False) for t in (TASK, QUERY, LLM)})
            for _ in range(layers)
        )
        # The head also reads the query's extra features (log prompt tokens) directly: cost is
        # mostly price x length, which the message-passing layers would otherwise blur.
        head_in = 3 * hidden + extra + self.pair
        self.head = nn.Sequential(nn.Linear(head_in, hidden), nn.ReLU(), nn.Linear(hidden, 2))

    def _z(self, h: Tensor) -> Tensor:
        return F.dropout(F.relu(h), self.dropout, self.training)

    def encode(self, data: HeteroData) -> list[dict[str, Tensor]]:
        """Node representations before each layer and after the last (h_0 .. h_L)."""
        xq = data[QUERY].x
        if self.training and self.input_dropout > 0:  # F.dropout's Bernoulli draws are slow
            keep = 1.0 - self.input_dropout
            xq = xq * torch.rand_like(xq).ge_(self.input_dropout).mul_(1.0 / keep)
        h = {t: self.inp[t](xq if t == QUERY else data[t].x) for t in (TASK, QUERY, LLM)}
        states = [h]
        for conv, root in zip(self.convs, self.roots, strict=True):
            z = {t: self._z(v) for t, v in h.items()}
            msg = conv(z, data.edge_index_dict, edge_attr_dict=data.edge_attr_dict)
            h = {t: root[t](z[t]) + msg[t] if t in msg else root[t](z[t]) for t in z}
            states.append(h)
        return states

    def edge(self, hq: Tensor, hl: Tensor, x_query: Tensor, pair: Tensor) -> Tensor:
        """[..., 2]: quality logit and normalised log cost of (query, LLM) pairs; `x_query` is
        the queries' input features (its last `extra` columns are read), `pair` the pairs'
        neighbourhood quality [..., PAIR_DIM] (read if the head was built for it)."""
        parts = [hq, hl, hq * hl, x_query[..., x_query.shape[-1] - self.extra :]]
        if self.pair:
            parts.append(pair)
        return self.head(torch.cat(parts, dim=-1))


# -- the graph -------------------------------------------------------------------------------


@dataclass
class _Graph:
    """The training graph as arrays: what the artifact stores to rebuild it."""

    x_query: np.ndarray  # [n, query_dim] float32 (float16 precision, as stored)
    query_task: np.ndarray  # [n] int64 task node, -1 for none
    x_task: np.ndarray  # [n_tasks, 384] float32
    task_names: list[str]
    x_llm: np.ndarray  # [n_llms, 384] float32; trained models first, then added ones
    llm_names: list[str]
    quality: np.ndarray  # [n, n_trained] float32, NaN where no record
    cost_z: np.ndarray  # [n, n_trained] float32 normalised log cost, NaN where no record
    near_idx: np.ndarray  # [n, k] int64: each query's nearest other training queries
    near_sim: np.ndarray  # [n, k] float32: their cosine similarities

    def pairs(self) -> tuple[Tensor, Tensor, Tensor]:
        """Observed query-LLM edges: query index, LLM index, attributes [E, 2]."""
        qi, li = np.nonzero(~np.isnan(self.quality))
        attr = np.stack([self.quality[qi, li], self.cost_z[qi, li]], axis=1)
        return torch.from_numpy(qi), torch.from_numpy(li), torch.from_numpy(attr).float()

    def members(self) -> Tensor:
        """Task-query edges [2, E] (task, query)."""
        q = np.flatnonzero(self.query_task >= 0)
        return torch.from_numpy(np.stack([self.query_task[q], q]).astype(np.int64))

    def pair_quality(self, idx: np.ndarray, sim: np.ndarray) -> np.ndarray:
        return pair_quality(idx, sim, self.quality, len(self.x_llm))

    def data(
        self,
        tq: Tensor,
        qt: Tensor,
        ql: Tensor,
        ql_attr: Tensor,
        qq: tuple[Tensor, Tensor] | None = None,
        x_query: Tensor | None = None,
    ) -> HeteroData:
        data = HeteroData()
        data[QUERY].x = torch.from_numpy(self.x_query) if x_query is None else x_query
        data[TASK].x = torch.from_numpy(self.x_task)
        data[LLM].x = torch.from_numpy(self.x_llm)
        data[TQ].edge_index = tq
        data[QT].edge_index = qt
        data[QL].edge_index = ql
        data[QL].edge_attr = ql_attr
        data[LQ].edge_index = ql.flip(0)
        data[LQ].edge_attr = ql_attr
        if qq is not None:
            data[QQ].edge_index, data[QQ].edge_attr = qq
        return data

    def full(self, similarity: bool) -> HeteroData:
        """Every training edge: the graph inference runs on."""
        qi, li, attr = self.pairs()
        tq = self.members()
        qq = None
        if similarity:
            everyone = torch.ones(len(self.x_query), dtype=torch.bool)
            qq = _sim_edges(
                torch.from_numpy(self.near_idx), torch.from_numpy(self.near_sim), everyone
            )
        return self.data(tq, tq.flip(0), torch.stack([qi, li]), attr, qq)


@dataclass
class _Cache:
    """The inference path's arrays: query input and root weights, per layer the message each
    task sends (zero row last, for a query without a task) and each training query sends along
    similarity edges, the LLMs' final representations and the edge head split into its query,
    LLM, product, extra-feature and neighbourhood-quality parts."""

    w_in: np.ndarray
    b_in: np.ndarray
    roots: list[np.ndarray]
    task_msgs: list[np.ndarray]
    sim_msgs: list[np.ndarray] | None
    h_llm: np.ndarray
    llm_part: np.ndarray
    w_query: np.ndarray
    w_product: np.ndarray
    w_extra: np.ndarray
    w_pair: np.ndarray
    w_out: np.ndarray
    b_out: np.ndarray


def _train_net(
    net: _GraphNet,
    g: _Graph,
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
        model: _GraphNet, data: HeteroData, sup: Tensor, pair: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        h = model.encode(data)[-1]
        out = model.edge(h[QUERY][qi[sup]], h[LLM][li[sup]], data[QUERY].x[qi[sup]], pair[sup])
        bce = F.binary_cross_entropy_with_logits(out[:, 0], attr[sup, 0])
        mse = F.mse_loss(out[:, 1], attr[sup, 1])
        return bce + cost_weight * mse, bce, mse

    # Validation: the inference situation exactly (validation queries are receivers only).
    keep_val = ~is_val[tq_all[1]]
    pairs_val = ~is_val[qi]
    qq_val = _sim_edges(*near, ~is_val) if similarity else None
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
            qq = _sim_edges(idx, sim, ~receiver)
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


def _query_features(queries: Queries, lexical: bool) -> np.ndarray:
    """Embedding, then the raw extra columns (log prompt tokens, lexical features)."""
    parts = [
        np.asarray(queries.ensure_embeddings(), np.float32),
        np.log1p(np.asarray(queries.input_tokens, np.float64)).reshape(-1, 1),
    ]
    if lexical:
        from routers.predictors.features import lexical_features

        parts.append(np.asarray(lexical_features(queries.texts), np.float64))
    return np.hstack([p.astype(np.float32) for p in parts])


def _embed(texts: list[str]) -> np.ndarray:
    from routers.predictors.embedding import embed

    return np.asarray(embed(texts), np.float32)


def _half(x: np.ndarray) -> np.ndarray:
    """float32 at float16 precision: what the artifact stores, so a loaded router predicts
    exactly as the trained one."""
    return x.astype(np.float16).astype(np.float32)


class GraphRouter:
    kind: ClassVar[str] = "graph"

    def __init__(
        self,
        models: list[str],
        params: dict[str, Any],
        net: _GraphNet,
        graph: _Graph,
        norm: dict[str, Any],
        linear: CostModel,
        added: dict[str, str] | None = None,
    ):
        self.models = models  # trained models; `add_model` ones are extra LLM nodes
        self.params = params
        self._net = net.eval()
        self._g = graph
        self._norm = norm  # embedding dim, extra-feature mean/scale, log-cost mean/std/var
        self._added = dict(added or {})
        self._linear = linear  # the CostModel fallback, for trained models only
        self._cost_source: dict[str, str] = dict(params.get("training", {}).get("cost_source", {}))
        self._task = {t: i for i, t in enumerate(graph.task_names)}
        self._llm = {m: j for j, m in enumerate(graph.llm_names)}
        self._lock = threading.RLock()
        self._cache: _Cache | None = None
        self._similarity = bool(params.get("similarity_edges")) and graph.near_idx.shape[1] > 0
        self._bank = np.ascontiguousarray(graph.x_query[:, : norm["embedding_dim"]])

    # -- training --------------------------------------------------------------------------

    @classmethod
    def train(
        cls,
        table: RecordTable,
        *,
        seed: int = 0,
        descriptions: dict[str, str] | None = None,
        **params: Any,
    ) -> GraphRouter:
        # What training recorded about itself (an artifact's params) is not a parameter.
        params = {k: v for k, v in params.items() if k not in ("training", "descriptions")}
        unknown = set(params) - set(DEFAULTS)
        if unknown:
            raise TypeError(f"unknown graph router parameters: {', '.join(sorted(unknown))}")
        p = {**DEFAULTS, **params}
        known = load_descriptions(DEFAULT_DESCRIPTIONS) if DEFAULT_DESCRIPTIONS.exists() else {}
        known.update(descriptions or {})
        model_text = {m: known.get(m, m) for m in table.models}
        p["descriptions"] = model_text

        queries = Queries.from_table(table)
        dim = int(queries.ensure_embeddings().shape[1])
        x = _query_features(queries, bool(p["lexical"]))
        extra_mean = x[:, dim:].mean(axis=0)
        extra_scale = x[:, dim:].std(axis=0) + 1e-6
        x[:, dim:] = (x[:, dim:] - extra_mean) / extra_scale
        x = _half(x)

        tasks = sorted(set(table.tasks))
        task_of = {t: i for i, t in enumerate(tasks)}
        query_task = np.array([task_of[t] for t in table.tasks], np.int64)
        k = int(p["neighbours"])
        bank = np.ascontiguousarray(x[:, :dim])
        near = nearest(bank, bank, k, self_rows=True)
        cross = nearest(bank, bank, k, bank_task=query_task, emb_task=query_task)
        log_cost = np.log(table.cost + _COST_EPS)
        seen = ~np.isnan(table.quality) & ~np.isnan(table.cost)
        mu, sd = float(log_cost[seen].mean()), float(log_cost[seen].std() + 1e-6)
        quality = np.where(seen, table.quality, np.nan).astype(np.float32)
        graph = _Graph(
            x_query=x,
            query_task=query_task,
            x_task=_embed([describe_task(t) for t in tasks]),
            task_names=tasks,
            x_llm=_embed([model_text[m] for m in table.models]),
            llm_names=list(table.models),
            quality=quality,
            cost_z=np.where(seen, (log_cost - mu) / sd, np.nan).astype(np.float32),
            near_idx=near[0],
            near_sim=near[1],
        )
        threads = torch.get_num_threads()
        torch.set_num_threads(int(p["threads"]))
        try:
            with torch.random.fork_rng():  # dropout and init draw from the global generator
                torch.manual_seed(seed)
                net = cls._build(p, x.shape[1], graph.x_task.shape[1], x.shape[1] - dim, k)
                info, val_rows = _train_net(net, graph, cross, p, seed)
        finally:
            torch.set_num_threads(threads)
        p["training"] = info
        norm = {
            "embedding_dim": dim,
            "extra_mean": extra_mean.tolist(),
            "extra_scale": extra_scale.tolist(),
            "log_cost_mean": mu,
            "log_cost_std": sd,
            "log_cost_var": info["cost_z_var"] * sd * sd,
        }
        router = cls(list(table.models), p, net, graph, norm, CostModel.fit(table))
        router._choose_cost_source(table, queries, val_rows)
        return router

    @staticmethod
    def _build(p: dict[str, Any], query_dim: int, node_dim: int, extra: int, k: int) -> _GraphNet:
        return _GraphNet(
            query_dim,
            node_dim,
            int(p["hidden"]),
            int(p["layers"]),
            float(p["dropout"]),
            extra,
            similarity=bool(p["similarity_edges"]) and k > 0,
            pair=bool(p["neighbour_quality"]) and k > 0,
            input_dropout=float(p["input_dropout"]),
        )

    def _choose_cost_source(self, table: RecordTable, queries: Queries, rows: np.ndarray) -> None:
        """Per trained model, the cost head or the linear CostModel, whichever prices the
        validation queries better (mean absolute log error). Records with exact per-token
        prices favour the linear fit; the head stays for models added by description."""
        rows = rows if len(rows) else np.arange(len(table))
        sub = table.subset(rows)
        q = Queries.from_table(sub)
        q.embeddings = queries.ensure_embeddings()[rows]
        head, linear = self._head_cost(q, self.models), self._linear.predict(q, self.models)
        errors: dict[str, dict[str, float]] = {}
        for j, m in enumerate(self.models):
            ok = sub.cost[:, j] > 0  # NaN (no record) and free answers have no log error
            if not ok.any():
                self._cost_source[m] = "head"
                continue
            truth = np.log(sub.cost[ok, j])
            e_head = float(np.mean(np.abs(np.log(np.maximum(head[ok, j], 1e-12)) - truth)))
            e_lin = float(np.mean(np.abs(np.log(np.maximum(linear[ok, j], 1e-12)) - truth)))
            errors[m] = {"head": round(e_head, 4), "linear": round(e_lin, 4)}
            self._cost_source[m] = "linear" if e_lin < e_head else "head"
        self.params["training"]["cost_log_error"] = errors
        self.params["training"]["cost_source"] = dict(self._cost_source)

    # -- new nodes: models known by description, tasks never seen --------------------------

    def add_model(self, name: str, description: str) -> None:
        """A model known only by its description joins as an LLM node without edges (so no
        neighbourhood quality either). A trained model keeps its node; adding the same model
        twice with one description is a no-op."""
        with self._lock:
            if name in self.models or self._added.get(name) == description:
                return
            row = _embed([description])
            g = self._g
            if name in self._llm:  # a new description for an added model
                x_llm, names = g.x_llm.copy(), g.llm_names
                x_llm[self._llm[name]] = row[0]
            else:
                x_llm, names = np.vstack([g.x_llm, row]), [*g.llm_names, name]
                self._llm[name] = len(g.llm_names)
            self._g = replace(g, x_llm=x_llm, llm_names=names)
            self._added[name] = description
            self._cache = None

    def _task_rows(self, tasks: list[str | None]) -> np.ndarray:
        """Task node per query (-1 for none); tasks never seen get a node from their
        description."""
        new = sorted({t for t in tasks if t is not None and t not in self._task})
        if new:
            g = self._g
            x_task = np.vstack([g.x_task, _embed([describe_task(t) for t in new])])
            for t in new:
                self._task[t] = len(self._task)
            self._g = replace(g, x_task=x_task, task_names=[*g.task_names, *new])
            self._cache = None
        return np.array([-1 if t is None else self._task[t] for t in tasks], np.int64)

    def _llm_rows(self, models: list[str]) -> list[int]:
        missing = [m for m in models if m not in self._llm]
        if missing:
            raise KeyError(
                f"the graph router knows no {', '.join(missing)}: it was trained on "
                f"{', '.join(self.models)}; add a model by its description with add_model()"
            )
        return [self._llm[m] for m in models]

    # -- inference -------------------------------------------------------------------------

    def _cached(self) -> _Cache:
        """Everything a query's prediction needs that does not depend on the query, from one
        pass of message passing over the training graph."""
        if self._cache is None:
            net = self._net

            def a(t: Tensor) -> np.ndarray:
                return t.detach().numpy().copy()

            with torch.inference_mode():
                states = net.encode(self._g.full(self._similarity))
                task_msgs, sim_msgs = [], []
                for conv, h in zip(net.convs, states, strict=False):
                    msg = a(conv.convs[TQ].lin(F.relu(h[TASK])))
                    task_msgs.append(np.vstack([msg, np.zeros((1, msg.shape[1]), msg.dtype)]))
                    if self._similarity:
                        sim_msgs.append(a(conv.convs[QQ].lin(F.relu(h[QUERY]))))
                h_llm = a(states[-1][LLM])
            hidden = h_llm.shape[1]
            w1, b1 = a(net.head[0].weight), a(net.head[0].bias)
            extra_end = 3 * hidden + net.extra
            self._cache = _Cache(
                w_in=a(net.inp[QUERY].weight).T,
                b_in=a(net.inp[QUERY].bias),
                roots=[a(r[QUERY].weight).T for r in net.roots],
                task_msgs=task_msgs,
                sim_msgs=sim_msgs if self._similarity else None,
                h_llm=h_llm,
                llm_part=h_llm @ w1[:, hidden : 2 * hidden].T + b1,
                w_query=w1[:, :hidden].T,
                w_product=w1[:, 2 * hidden : 3 * hidden].T,
                w_extra=w1[:, 3 * hidden : extra_end].T,
                w_pair=w1[:, extra_end:].T,
                w_out=a(net.head[2].weight).T,
                b_out=a(net.head[2].bias),
            )
        return self._cache

    def _features(self, queries: Queries) -> np.ndarray:
        x = _query_features(queries, bool(self.params["lexical"]))
        dim = self._norm["embedding_dim"]
        x[:, dim:] = (x[:, dim:] - np.asarray(self._norm["extra_mean"], np.float32)) / (
            np.asarray(self._norm["extra_scale"], np.float32)
        )
        return x

    def _neighbours(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """New queries' nearest training queries."""
        emb = x[:, : self._norm["embedding_dim"]]
        return nearest(self._bank, emb, int(self._g.near_idx.shape[1]))

    def _edges(self, queries: Queries, models: list[str]) -> np.ndarray:
        """[n, m, 2]: quality logit and normalised log cost. The query's layers in numpy: a
        handful of small matmuls, which torch's per-op and thread overheads would dominate."""
        x = self._features(queries)
        with self._lock:
            cols = self._llm_rows(models)
            rows = self._task_rows(list(queries.tasks))  # -1 picks the zero message
            c = self._cached()
            g = self._g
        idx, sim = self._neighbours(x)
        h = x @ c.w_in + c.b_in
        if c.sim_msgs is not None:
            w = _weights(sim)
            w /= w.sum(axis=1, keepdims=True)
        for layer, (root, msgs) in enumerate(zip(c.roots, c.task_msgs, strict=True)):
            h_next = np.maximum(h, 0) @ root + msgs[rows]
            if c.sim_msgs is not None:
                h_next += np.einsum("nk,nkh->nh", w, c.sim_msgs[layer][idx])
            h = h_next
        dim = self._norm["embedding_dim"]
        pre = (h @ c.w_query + x[:, dim:] @ c.w_extra)[:, None, :] + c.llm_part[cols][None]
        pre += (h[:, None, :] * c.h_llm[cols][None]) @ c.w_product
        if len(c.w_pair):
            pre += pair_quality(idx, sim, g.quality, len(g.x_llm))[:, cols] @ c.w_pair
        out = np.maximum(pre, 0) @ c.w_out + c.b_out
        return out.astype(np.float64)

    def predict_quality(self, queries: Queries, models: list[str]) -> np.ndarray:
        if len(queries) == 0:
            self._llm_rows(models)
            return np.zeros((0, len(models)))
        quality = 1.0 / (1.0 + np.exp(-self._edges(queries, models)[..., 0]))
        added = [j for j, m in enumerate(models) if m in self._added and m not in self.models]
        if added:
            quality[:, added] = self._anchored_quality(queries, [models[j] for j in added])
        return quality

    def _anchored_quality(self, queries: Queries, added: list[str]) -> np.ndarray:
        """A model known only by its description, placed among the trained ones: its LLM
        node's own prediction, blended with the trained models' predictions weighted by how
        alike their descriptions are. With few trained LLMs the GNN cannot learn a reliable
        description -> quality map on its own (two models here), so the similarity of
        descriptions carries most of the weight."""
        own = 1.0 / (1.0 + np.exp(-self._edges(queries, added)[..., 0]))
        trained = list(self.models)
        known = 1.0 / (1.0 + np.exp(-self._edges(queries, trained)[..., 0]))
        x_llm = self._g.x_llm
        base = x_llm[[self._llm[m] for m in trained]]
        base = base / np.linalg.norm(base, axis=1, keepdims=True)
        out = np.empty((len(queries), len(added)))
        for j, m in enumerate(added):
            v = x_llm[self._llm[m]]
            sims = base @ (v / np.linalg.norm(v))
            w = np.exp((sims - sims.max()) / ANCHOR_TEMPERATURE)
            out[:, j] = ANCHOR_WEIGHT * (known @ (w / w.sum())) + (1 - ANCHOR_WEIGHT) * own[:, j]
        return out

    def predict_cost(self, queries: Queries, models: list[str]) -> np.ndarray:
        """From the cost head, or for a trained model whose records the linear CostModel
        priced better in validation, from that."""
        out = self._head_cost(queries, models)
        for j, m in enumerate(models):
            if self._cost_source.get(m) == "linear":
                out[:, j] = self._linear.predict(queries, [m])[:, 0]
        return out

    def _head_cost(self, queries: Queries, models: list[str]) -> np.ndarray:
        if len(queries) == 0:
            self._llm_rows(models)
            return np.zeros((0, len(models)))
        n = self._norm
        log_cost = n["log_cost_mean"] + n["log_cost_std"] * self._edges(queries, models)[..., 1]
        return np.maximum(np.exp(log_cost + 0.5 * n["log_cost_var"]) - _COST_EPS, 0.0)

    def _reference_edges(self, queries: Queries, models: list[str]) -> np.ndarray:
        """What `_edges` computes, by message passing on the training graph with the new
        queries appended as receivers: for checking the cached path."""
        xn = self._features(queries)
        x = torch.from_numpy(xn)
        with self._lock:
            cols = self._llm_rows(models)
            rows = torch.from_numpy(self._task_rows(list(queries.tasks)))
            g = self._g
        n, m = len(g.x_query), len(cols)
        qi, li, attr = g.pairs()
        tq = g.members()
        new = torch.arange(n, n + len(x))[rows >= 0]
        tq_all = torch.cat([tq, torch.stack([rows[rows >= 0], new])], dim=1)
        x_all = torch.cat([torch.from_numpy(g.x_query), x])
        idx, sim = self._neighbours(xn)
        qq = None
        if self._similarity:  # the new queries receive from their neighbours, send nothing
            all_idx = torch.from_numpy(np.vstack([g.near_idx, idx]))
            all_sim = torch.from_numpy(np.vstack([g.near_sim, sim]))
            qq = _sim_edges(all_idx, all_sim, torch.arange(n + len(x)) < n)
        data = g.data(tq_all, tq.flip(0), torch.stack([qi, li]), attr, qq, x_query=x_all)
        pair = torch.from_numpy(g.pair_quality(idx, sim)[:, cols])
        with torch.inference_mode():
            h = self._net.encode(data)[-1]
            hq, hl = h[QUERY][n:], h[LLM][cols]
            out = self._net.edge(
                hq[:, None, :].expand(-1, m, -1),
                hl[None].expand(len(hq), -1, -1),
                x[:, None, :].expand(-1, m, -1),
                pair,
            )
        return out.numpy().astype(np.float64)

    # -- artifact --------------------------------------------------------------------------

    def save_weights(self, out: Path) -> dict[str, Any]:
        with self._lock:
            g = self._g
            torch.save(self._net.state_dict(), out / STATE)
            np.savez(
                out / GRAPH,
                x_query=g.x_query.astype(np.float16),  # trained at this precision
                query_task=g.query_task,
                x_task=g.x_task,
                task_names=np.array(g.task_names, dtype=str),
                x_llm=g.x_llm,
                llm_names=np.array(g.llm_names, dtype=str),
                quality=g.quality,
                cost_z=g.cost_z,
                near_idx=g.near_idx.astype(np.int32),
                near_sim=g.near_sim,
            )
            return {
                "state_dict": STATE,
                "graph": GRAPH,
                "query_dim": int(g.x_query.shape[1]),
                "node_dim": int(g.x_task.shape[1]),
                "norm": self._norm,
                "cost_model": self._linear.to_json(),
                "added_models": dict(self._added),
            }

    @classmethod
    def load_weights(cls, directory: Path, manifest: dict[str, Any]) -> GraphRouter:
        weights, params = manifest["weights"], {**DEFAULTS, **manifest["params"]}
        with np.load(directory / weights["graph"], allow_pickle=False) as w:
            # Artifacts from before similarity edges have no neighbours.
            n, has_near = len(w["query_task"]), "near_idx" in w.files
            graph = _Graph(
                x_query=w["x_query"].astype(np.float32),
                query_task=w["query_task"],
                x_task=w["x_task"],
                task_names=[str(t) for t in w["task_names"]],
                x_llm=w["x_llm"],
                llm_names=[str(m) for m in w["llm_names"]],
                quality=w["quality"],
                cost_z=w["cost_z"],
                near_idx=w["near_idx"].astype(np.int64) if has_near else np.zeros((n, 0), int),
                near_sim=w["near_sim"] if has_near else np.zeros((n, 0), np.float32),
            )
        if not has_near:
            params.update(neighbours=0, similarity_edges=False, neighbour_quality=False)
        net = cls._build(
            params,
            int(weights["query_dim"]),
            int(weights["node_dim"]),
            len(weights["norm"]["extra_mean"]),
            int(graph.near_idx.shape[1]),
        )
        net.load_state_dict(torch.load(directory / weights["state_dict"], weights_only=True))
        return cls(
            list(manifest["models"]),
            params,
            net,
            graph,
            weights["norm"],
            CostModel.from_json(weights["cost_model"]),
            weights["added_models"],
        )
