"""The graph predictor's graph: query features, nearest training queries, and the heterogeneous
graph of tasks, queries and LLMs that training and inference pass messages on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from routers.predictors.base import Queries
from routers.predictors.graph.schema import (
    COST_EPS,
    LLM,
    LQ,
    MIN_SIM,
    PAIR_DIM,
    QL,
    QQ,
    QT,
    QUERY,
    TASK,
    TQ,
)
from routers.records import RecordTable

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


def neighbour_weights(sim: np.ndarray) -> np.ndarray:
    """A neighbour's weight: its similarity, floored at `MIN_SIM`."""
    return np.maximum(sim, MIN_SIM).astype(np.float32)


def pair_quality(idx: np.ndarray, sim: np.ndarray, quality: np.ndarray, n_llms: int) -> np.ndarray:
    """[n, n_llms, 2]: per (query, LLM) the similarity-weighted mean quality of the query's
    neighbours' edges to the LLM (0 if none), and 1 where there is any edge, else 0. LLMs past
    `quality`'s columns (added by description) have none."""
    out = np.zeros((len(idx), n_llms, PAIR_DIM), np.float32)
    if idx.shape[1] == 0 or len(quality) == 0:
        return out
    q = quality[idx]  # [n, k, m]
    # A neighbour left out (-inf: fewer queries of other tasks than k) weighs nothing.
    seen = ~np.isnan(q) & np.isfinite(sim)[:, :, None]
    w = neighbour_weights(sim)[:, :, None] * seen
    total = w.sum(axis=1)
    mean = (np.where(seen, q, 0.0) * w).sum(axis=1) / np.maximum(total, 1e-12)
    m = quality.shape[1]
    out[:, :m, 0] = np.where(total > 0, mean, 0.0)
    out[:, :m, 1] = total > 0
    return out


def sim_edges(idx: Tensor, sim: Tensor, keep_src: Tensor) -> tuple[Tensor, Tensor]:
    """Similarity edges [2, E] (neighbour, query) from senders `keep_src` only, with weights
    [E, 1] normalised to sum to one per receiving query."""
    n, k = idx.shape
    src, dst = idx.reshape(-1), torch.arange(n).repeat_interleave(k)
    w = torch.clamp(sim.reshape(-1), min=MIN_SIM)
    keep = keep_src[src] & torch.isfinite(sim.reshape(-1))  # -inf: a neighbour left out
    src, dst, w = src[keep], dst[keep], w[keep]
    total = torch.zeros(n).index_add_(0, dst, w)
    return torch.stack([src, dst]), (w / total[dst]).unsqueeze(1)


# -- features --------------------------------------------------------------------------------


def query_features(queries: Queries, lexical: bool, encoder: str) -> np.ndarray:
    """Embedding, then the raw extra columns (log prompt tokens, lexical features)."""
    parts = [
        np.asarray(queries.ensure_embeddings(encoder), np.float32),
        np.log1p(np.asarray(queries.input_tokens, np.float64)).reshape(-1, 1),
    ]
    if lexical:
        from routers.predictors.features import lexical_features

        parts.append(np.asarray(lexical_features(queries.texts), np.float64))
    return np.hstack([p.astype(np.float32) for p in parts])


def embed_texts(texts: list[str], encoder: str) -> np.ndarray:
    """Node features of task and LLM descriptions: their sentence embeddings."""
    from routers.predictors.embedding import embed

    return np.asarray(embed(texts, encoder), np.float32)


def half(x: np.ndarray) -> np.ndarray:
    """float32 at float16 precision: what the artifact stores, so a loaded predictor predicts
    exactly as the trained one."""
    return x.astype(np.float16).astype(np.float32)


# -- the graph -------------------------------------------------------------------------------


@dataclass(slots=True)
class Graph:
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
            qq = sim_edges(
                torch.from_numpy(self.near_idx), torch.from_numpy(self.near_sim), everyone
            )
        return self.data(tq, tq.flip(0), torch.stack([qi, li]), attr, qq)


def training_graph(
    table: RecordTable, queries: Queries, p: dict[str, Any], model_text: dict[str, str]
) -> tuple[Graph, tuple[np.ndarray, np.ndarray], dict[str, Any]]:
    """The graph of `table` for the parameters `p`, each query's nearest training queries of
    other tasks (the neighbours of a query whose task is treated as never seen), and the
    normalisation of the query features and log costs (without the cost variance, which
    training finds)."""
    dim = int(queries.ensure_embeddings(p["encoder"]).shape[1])
    x = query_features(queries, bool(p["lexical"]), p["encoder"])
    extra_mean = x[:, dim:].mean(axis=0)
    extra_scale = x[:, dim:].std(axis=0) + 1e-6
    x[:, dim:] = (x[:, dim:] - extra_mean) / extra_scale
    x = half(x)

    tasks = sorted(set(table.tasks))
    task_of = {t: i for i, t in enumerate(tasks)}
    query_task = np.array([task_of[t] for t in table.tasks], np.int64)
    # One k for both lists (training swaps one for the other per query), at most the others.
    k = min(int(p["neighbours"]), len(table) - 1)
    bank = np.ascontiguousarray(x[:, :dim])
    near = nearest(bank, bank, k, self_rows=True)
    cross = nearest(bank, bank, k, bank_task=query_task, emb_task=query_task)
    log_cost = np.log(table.cost + COST_EPS)
    seen = ~np.isnan(table.quality) & ~np.isnan(table.cost)
    mu, sd = float(log_cost[seen].mean()), float(log_cost[seen].std() + 1e-6)
    quality = np.where(seen, table.quality, np.nan).astype(np.float32)
    graph = Graph(
        x_query=x,
        query_task=query_task,
        x_task=embed_texts([describe_task(t) for t in tasks], p["encoder"]),
        task_names=tasks,
        x_llm=embed_texts([model_text[m] for m in table.models], p["encoder"]),
        llm_names=list(table.models),
        quality=quality,
        cost_z=np.where(seen, (log_cost - mu) / sd, np.nan).astype(np.float32),
        near_idx=near[0],
        near_sim=near[1],
    )
    norm = {
        "embedding_dim": dim,
        "extra_mean": extra_mean.tolist(),
        "extra_scale": extra_scale.tolist(),
        "log_cost_mean": mu,
        "log_cost_std": sd,
    }
    return graph, cross, norm
