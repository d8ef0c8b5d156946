"""`GraphPredictor`: training from records, models and tasks joining later, predictions, and the
artifact (`graph_state.pt`, the network's state_dict, and `graph.npz`, the training graph)."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from routers.data import DEFAULT_DESCRIPTIONS
from routers.predictors import weights
from routers.predictors.base import CostModel, Queries
from routers.predictors.graph.building import (
    Graph,
    describe_task,
    embed_texts,
    nearest,
    query_features,
    training_graph,
)
from routers.predictors.graph.inference import InferenceCache, reference_edges
from routers.predictors.graph.layers import GraphNet, build_net
from routers.predictors.graph.schema import COST_EPS
from routers.predictors.graph.training import DEFAULTS, fit, training_params
from routers.records import RecordTable, load_descriptions

STATE = "graph_state.pt"
GRAPH = "graph.npz"
# How a description-only model is placed (see `_anchored_quality`).
ANCHOR_TEMPERATURE = 0.05
ANCHOR_WEIGHT = 0.8


class GraphPredictor:
    kind: ClassVar[str] = "graph"

    def __init__(
        self,
        models: list[str],
        params: dict[str, Any],
        net: GraphNet,
        graph: Graph,
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
        self._cache: InferenceCache | None = None
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
    ) -> GraphPredictor:
        p = training_params(params)
        known = load_descriptions(DEFAULT_DESCRIPTIONS) if DEFAULT_DESCRIPTIONS.exists() else {}
        known.update(descriptions or {})
        model_text = {m: known.get(m, m) for m in table.models}
        p["descriptions"] = model_text

        queries = Queries.from_table(table)
        graph, cross, norm = training_graph(table, queries, p, model_text)
        extra = graph.x_query.shape[1] - norm["embedding_dim"]
        net, info, val_rows = fit(graph, cross, p, seed, extra)
        p["training"] = info
        sd = norm["log_cost_std"]
        norm["log_cost_var"] = info["cost_z_var"] * sd * sd
        predictor = cls(list(table.models), p, net, graph, norm, CostModel.fit(table))
        predictor._choose_cost_source(table, queries, val_rows)
        return predictor

    def _choose_cost_source(self, table: RecordTable, queries: Queries, rows: np.ndarray) -> None:
        """Per trained model, the cost head or the linear CostModel, whichever prices the
        validation queries better (mean absolute log error). Records with exact per-token
        prices favour the linear fit; the head stays for models added by description."""
        rows = rows if len(rows) else np.arange(len(table))
        sub = table.subset(rows)
        q = Queries.from_table(sub)
        encoder = self.params["encoder"]
        q.embeddings = {encoder: queries.ensure_embeddings(encoder)[rows]}
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
            row = embed_texts([description], self.params["encoder"])
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
            x_task = np.vstack(
                [g.x_task, embed_texts([describe_task(t) for t in new], self.params["encoder"])]
            )
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

    def _cached(self) -> InferenceCache:
        if self._cache is None:
            self._cache = InferenceCache.build(self._net, self._g, self._similarity)
        return self._cache

    def _features(self, queries: Queries) -> np.ndarray:
        x = query_features(queries, bool(self.params["lexical"]), self.params["encoder"])
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
        """[n, m, 2]: quality logit and normalised log cost, by the cached path."""
        x = self._features(queries)
        with self._lock:
            cols = self._llm_rows(models)
            rows = self._task_rows(list(queries.tasks))
            c = self._cached()
            g = self._g
        idx, sim = self._neighbours(x)
        return c.edges(x, self._norm["embedding_dim"], rows, cols, idx, sim, g)

    def _reference_edges(self, queries: Queries, models: list[str]) -> np.ndarray:
        """What `_edges` computes, by message passing on the extended graph."""
        x = self._features(queries)
        with self._lock:
            cols = self._llm_rows(models)
            rows = self._task_rows(list(queries.tasks))
            g = self._g
        idx, sim = self._neighbours(x)
        return reference_edges(self._net, g, x, rows, cols, idx, sim, self._similarity)

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
        return np.maximum(np.exp(log_cost + 0.5 * n["log_cost_var"]) - COST_EPS, 0.0)

    # -- artifact --------------------------------------------------------------------------

    def save_weights(self, out: Path) -> dict[str, Any]:
        with self._lock:
            g = self._g
            weights.save_state(out / STATE, self._net)
            arrays = {
                "x_query": g.x_query.astype(np.float16),  # trained at this precision
                "query_task": g.query_task,
                "x_task": g.x_task,
                "task_names": np.array(g.task_names, dtype=str),
                "x_llm": g.x_llm,
                "llm_names": np.array(g.llm_names, dtype=str),
                "quality": g.quality,
                "cost_z": g.cost_z,
                "near_idx": g.near_idx.astype(np.int32),
                "near_sim": g.near_sim,
            }
            weights.save_arrays(out / GRAPH, arrays)
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
    def load_weights(cls, directory: Path, manifest: dict[str, Any]) -> GraphPredictor:
        files, params = manifest["weights"], {**DEFAULTS, **manifest["params"]}
        w = weights.load_arrays(directory / files["graph"])
        # Artifacts from before similarity edges have no neighbours.
        n, has_near = len(w["query_task"]), "near_idx" in w
        graph = Graph(
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
        net = build_net(
            params,
            int(files["query_dim"]),
            int(files["node_dim"]),
            len(files["norm"]["extra_mean"]),
            int(graph.near_idx.shape[1]),
        )
        net.load_state_dict(weights.load_state(directory / files["state_dict"]))
        return cls(
            list(manifest["models"]),
            params,
            net,
            graph,
            files["norm"],
            CostModel.from_json(files["cost_model"]),
            files["added_models"],
        )
