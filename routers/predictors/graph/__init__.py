"""The graph predictor ("graph"), after GraphRouter (Feng et al., ICLR 2025): a GNN on a graph of
task, query and LLM nodes predicts each (query, LLM) edge's quality and cost.

`schema` names the nodes and relations, `layers` is the network, `building` makes the graph
(nearest neighbours included), `training` fits it with masked edges, `inference` is the cached
numpy path a query takes, `predictor` is `GraphPredictor` and its artifact. How and why it works:
docs/routers.md, "Graph router".
"""
