"""The graph predictor's inference path: a new query joins the training graph as a receiver only,
so what it receives is computed once and cached, and its layers run as a few numpy matmuls.

`reference_edges` computes the same by message passing on the extended graph, to check it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from routers.predictors.graph.building import Graph, neighbour_weights, pair_quality, sim_edges
from routers.predictors.graph.layers import GraphNet
from routers.predictors.graph.schema import LLM, QQ, QUERY, TASK, TQ


def _array(t: Tensor) -> np.ndarray:
    return t.detach().numpy().copy()


@dataclass(slots=True)
class InferenceCache:
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

    @classmethod
    def build(cls, net: GraphNet, graph: Graph, similarity: bool) -> InferenceCache:
        """Everything a query's prediction needs that does not depend on the query, from one
        pass of message passing over the training graph."""
        with torch.inference_mode():
            states = net.encode(graph.full(similarity))
            task_msgs, sim_msgs = [], []
            for conv, h in zip(net.convs, states, strict=False):
                msg = _array(conv.convs[TQ].lin(F.relu(h[TASK])))
                task_msgs.append(np.vstack([msg, np.zeros((1, msg.shape[1]), msg.dtype)]))
                if similarity:
                    sim_msgs.append(_array(conv.convs[QQ].lin(F.relu(h[QUERY]))))
            h_llm = _array(states[-1][LLM])
        hidden = h_llm.shape[1]
        w1, b1 = _array(net.head[0].weight), _array(net.head[0].bias)
        extra_end = 3 * hidden + net.extra
        return cls(
            w_in=_array(net.inp[QUERY].weight).T,
            b_in=_array(net.inp[QUERY].bias),
            roots=[_array(r[QUERY].weight).T for r in net.roots],
            task_msgs=task_msgs,
            sim_msgs=sim_msgs if similarity else None,
            h_llm=h_llm,
            llm_part=h_llm @ w1[:, hidden : 2 * hidden].T + b1,
            w_query=w1[:, :hidden].T,
            w_product=w1[:, 2 * hidden : 3 * hidden].T,
            w_extra=w1[:, 3 * hidden : extra_end].T,
            w_pair=w1[:, extra_end:].T,
            w_out=_array(net.head[2].weight).T,
            b_out=_array(net.head[2].bias),
        )

    def edges(
        self,
        x: np.ndarray,
        dim: int,
        rows: np.ndarray,
        cols: list[int],
        idx: np.ndarray,
        sim: np.ndarray,
        graph: Graph,
    ) -> np.ndarray:
        """[n, m, 2]: quality logit and normalised log cost of the queries' edges to the LLM
        nodes `cols`. `x`: the queries' normalised features (embedding in the first `dim`
        columns), `rows` their task nodes (-1 picks the zero message), `idx`/`sim` their
        nearest training queries. A handful of small matmuls, which torch's per-op and thread
        overheads would dominate."""
        h = x @ self.w_in + self.b_in
        if self.sim_msgs is not None:
            w = neighbour_weights(sim)
            w /= w.sum(axis=1, keepdims=True)
        for layer, (root, msgs) in enumerate(zip(self.roots, self.task_msgs, strict=True)):
            h_next = np.maximum(h, 0) @ root + msgs[rows]
            if self.sim_msgs is not None:
                h_next += np.einsum("nk,nkh->nh", w, self.sim_msgs[layer][idx])
            h = h_next
        pre = (h @ self.w_query + x[:, dim:] @ self.w_extra)[:, None, :] + self.llm_part[cols][None]
        pre += (h[:, None, :] * self.h_llm[cols][None]) @ self.w_product
        if len(self.w_pair):
            pre += pair_quality(idx, sim, graph.quality, len(graph.x_llm))[:, cols] @ self.w_pair
        out = np.maximum(pre, 0) @ self.w_out + self.b_out
        return out.astype(np.float64)


def reference_edges(
    net: GraphNet,
    g: Graph,
    xn: np.ndarray,
    task_rows: np.ndarray,
    cols: list[int],
    idx: np.ndarray,
    sim: np.ndarray,
    similarity: bool,
) -> np.ndarray:
    """What `InferenceCache.edges` computes, by message passing on the training graph with the
    new queries appended as receivers: for checking the cached path."""
    x = torch.from_numpy(xn)
    rows = torch.from_numpy(task_rows)
    n, m = len(g.x_query), len(cols)
    qi, li, attr = g.pairs()
    tq = g.members()
    new = torch.arange(n, n + len(x))[rows >= 0]
    tq_all = torch.cat([tq, torch.stack([rows[rows >= 0], new])], dim=1)
    x_all = torch.cat([torch.from_numpy(g.x_query), x])
    qq = None
    if similarity:  # the new queries receive from their neighbours, send nothing
        all_idx = torch.from_numpy(np.vstack([g.near_idx, idx]))
        all_sim = torch.from_numpy(np.vstack([g.near_sim, sim]))
        qq = sim_edges(all_idx, all_sim, torch.arange(n + len(x)) < n)
    data = g.data(tq_all, tq.flip(0), torch.stack([qi, li]), attr, qq, x_query=x_all)
    pair = torch.from_numpy(g.pair_quality(idx, sim)[:, cols])
    with torch.inference_mode():
        h = net.encode(data)[-1]
        hq, hl = h[QUERY][n:], h[LLM][cols]
        out = net.edge(
            hq[:, None, :].expand(-1, m, -1),
            hl[None].expand(len(hq), -1, -1),
            x[:, None, :].expand(-1, m, -1),
            pair,
        )
    return out.numpy().astype(np.float64)
