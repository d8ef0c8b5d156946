"""The graph predictor's network: per-relation message passing and the (query, LLM) edge head."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch_geometric.data import HeteroData
from torch_geometric.nn import HeteroConv, MessagePassing

from routers.predictors.graph.schema import (
    EDGE_DIM,
    LLM,
    LQ,
    NODE_TYPES,
    PAIR_DIM,
    QL,
    QQ,
    QT,
    QUERY,
    TASK,
    TQ,
    Relation,
)


class RelConv(MessagePassing):
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


class SimConv(MessagePassing):
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


class GraphNet(nn.Module):
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

        def relations() -> dict[Relation, MessagePassing]:
            rel: dict[Relation, MessagePassing] = {
                TQ: RelConv(hidden),
                QT: RelConv(hidden),
                QL: RelConv(hidden, EDGE_DIM),
                LQ: RelConv(hidden, EDGE_DIM),
            }
            if similarity:
                rel[QQ] = SimConv(hidden)
            return rel

        self.convs = nn.ModuleList(HeteroConv(relations(), aggr="sum") for _ in range(layers))
        self.roots = nn.ModuleList(
            nn.ModuleDict({t: nn.Linear(hidden, hidden, bias=False) for t in NODE_TYPES})
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
        h = {t: self.inp[t](xq if t == QUERY else data[t].x) for t in NODE_TYPES}
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


def build_net(p: dict[str, Any], query_dim: int, node_dim: int, extra: int, k: int) -> GraphNet:
    """The network the parameters `p` describe, for `k` neighbours per query (0: none, so
    neither similarity edges nor neighbourhood quality)."""
    return GraphNet(
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
