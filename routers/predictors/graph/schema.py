"""The graph's node types and relations, and the widths of what its edges carry."""

from __future__ import annotations

TASK, QUERY, LLM = "task", "query", "llm"
NODE_TYPES = (TASK, QUERY, LLM)
Relation = tuple[str, str, str]
TQ: Relation = (TASK, "contains", QUERY)
QT: Relation = (QUERY, "in", TASK)
QL: Relation = (QUERY, "answered_by", LLM)
LQ: Relation = (LLM, "answered", QUERY)
QQ: Relation = (QUERY, "similar_to", QUERY)
EDGE_DIM = 2  # query-LLM edge attributes: quality, normalised log cost
PAIR_DIM = 2  # neighbourhood quality of a (query, LLM) pair, whether there is any
MIN_SIM = 1e-3  # floor of a neighbour's weight: dissimilar neighbours still count a little
COST_EPS = 1e-9  # USD, so that a free answer has a finite log cost
