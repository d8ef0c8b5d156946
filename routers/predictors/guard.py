"""The out-of-distribution guard every learned router wears: it knows when it does not know.

A predictor trained on some tasks is confidently wrong far from them (the shipped routers sent
math word problems to the weak model at lambda 0). The guard wraps any predictor and:
- measures a query's **familiarity**: the mean cosine similarity of its `k` nearest training
  queries, mapped to a weight in [0, 1] on a local scale read off those neighbours: 1 at how
  close they are to the rest of their own task, 0 at how close they are to the *other* tasks
  only, i.e. what a task never seen looks like from inside the training data. Both come from
  the records; no task or model name is special.
- **shrinks** the predicted quality toward each model's prior (its mean quality in the
  training records) as familiarity falls: `w x predicted + (1 - w) x prior`. Far from the
  data the route ranks models by what they do on average, so its most quality-seeking setting
  sends to the model that is best on average instead of to a confident guess.
- places **models known only by a description** among the trained ones: the predictor's own
  placement where it has one (the graph router), else the trained models' predictions weighted
  by how alike their descriptions are (softmax over cosine similarity). Either is lowered by a
  pessimism `margin`, so a new model takes traffic only where it is predicted clearly better
  per dollar, and adding it by description does not cost quality.

The guard's arrays are `guard.npz` beside the predictor's own weights; the manifest's `guard`
section holds its parameters and `inductive: true` says the artifact accepts new models.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from routers.predictors import weights
from routers.predictors.base import CostModel, Predictor, Queries, unit_rows
from routers.predictors.embedding import encoder_of
from routers.records import RecordTable

GUARD = "guard.npz"
DEFAULTS: dict[str, Any] = {
    "enabled": True,
    "k": 10,  # neighbours whose mean similarity is the familiarity
    "bank_size": 4096,  # training queries kept for it (a sample: bounded size and latency)
    # Weight 1 at lo + reach x (hi - lo): at 0.5, most queries of a seen task count fully.
    "reach": 0.5,
    "min_gap": 0.05,  # least width of the local scale (hi - lo)
    "power": 1.0,  # weight = ((f - lo) / (hi - lo)) ** power, clipped to [0, 1]
    # Added to the candidate that is best on average (its prior): another model is preferred
    # at lambda 0 only when predicted better by more than this.
    "lead": 0.02,
    "margin": 0.1,  # taken off a description-only model's predicted quality
    "temperature": 0.05,  # of the softmax over description similarities
}


def _top_k_mean(sims: np.ndarray, k: int) -> np.ndarray:
    k = max(1, min(k, sims.shape[1]))
    return np.partition(sims, sims.shape[1] - k, axis=1)[:, -k:].mean(axis=1)


def bank_familiarity(bank: np.ndarray, tasks: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per bank query: the median familiarity of its task's queries to the rest of that task
    (each itself excluded), and to the other tasks only (what an unseen task looks like from
    there). Task medians, not the query's own figures: nearest neighbours are mostly the
    densest queries, whose own figures run high. One task only: the latter is 0."""
    task = np.asarray(tasks)
    inside, outside = [], []
    for start in range(0, len(bank), 512):
        sims = bank[start : start + 512] @ bank.T
        rows = np.arange(start, start + len(sims))
        sims[rows - start, rows] = -1.0
        inside.append(_top_k_mean(sims, k))
        other = np.where(task[rows][:, None] == task[None, :], -1.0, sims)
        outside.append(_top_k_mean(other, k) if len(set(tasks)) > 1 else np.zeros(len(rows)))
    f_in, f_out = np.concatenate(inside), np.concatenate(outside)
    own, other = np.empty(len(bank), np.float32), np.empty(len(bank), np.float32)
    for t in set(tasks):
        rows = task == t
        own[rows], other[rows] = np.median(f_in[rows]), np.median(f_out[rows])
    return own, other


class GuardedPredictor:
    """Any `Predictor`, with familiarity shrinkage and description-only models (see module)."""

    def __init__(
        self,
        inner: Predictor,
        params: dict[str, Any],
        bank: np.ndarray,  # [b, dim] unit training embeddings
        prior: dict[str, float],  # trained model -> mean training quality
        described: dict[str, np.ndarray],  # trained model -> unit description embedding
        own_task: np.ndarray,  # [b] each bank query's familiarity within its task
        other_tasks: np.ndarray,  # [b] and to the other tasks only
        added: dict[str, str] | None = None,
    ):
        self.inner = inner
        self.kind: str = inner.kind
        self.guard = params
        self._bank = unit_rows(np.asarray(bank, np.float16).astype(np.float32))
        self._prior = prior
        self._described = described
        self._own_task, self._other_tasks = own_task, other_tasks
        self._added: dict[str, str] = {}
        self._added_vec: dict[str, np.ndarray] = {}
        self._added_cost: dict[str, CostModel] = {}
        self._lock = threading.Lock()
        self._inner_places = hasattr(inner, "add_model")
        for name, text in (added or {}).items():
            self.add_model(name, text)

    @property
    def models(self) -> list[str]:
        return self.inner.models

    @property
    def params(self) -> dict[str, Any]:
        return self.inner.params

    # -- training -------------------------------------------------------------------------

    @classmethod
    def fit(
        cls,
        inner: Predictor,
        table: RecordTable,
        *,
        seed: int = 0,
        descriptions: dict[str, str] | None = None,
        **given: Any,
    ) -> GuardedPredictor:
        unknown = sorted(set(given) - set(DEFAULTS))
        if unknown:
            raise ValueError(f"unknown guard parameter(s) {', '.join(unknown)}")
        p = {**DEFAULTS, **given}
        encoder = encoder_of(inner.params)
        emb = Queries.from_table(table).ensure_embeddings(encoder).astype(np.float32)
        rng = np.random.default_rng(seed)
        bank_rows = np.arange(len(emb))
        if len(bank_rows) > int(p["bank_size"]):
            bank_rows = np.sort(rng.choice(bank_rows, int(p["bank_size"]), replace=False))
        bank = unit_rows(emb[bank_rows].astype(np.float16).astype(np.float32))
        own, other = bank_familiarity(bank, [table.tasks[i] for i in bank_rows], int(p["k"]))
        prior = {
            m: float(np.nanmean(table.quality[:, j]))
            for j, m in enumerate(table.models)
            if not np.isnan(table.quality[:, j]).all()
        }
        described = _describe(descriptions, inner.models, encoder)
        return cls(inner, p, bank, prior, described, own, other)

    # -- models known by description ------------------------------------------------------

    def add_model(self, name: str, description: str, cost: CostModel | None = None) -> None:
        """`name` joins from its description (a trained model stays as it is). `cost` prices
        it offline; in the gateway the policy prices every model."""
        if name in self.inner.models:
            return
        from routers.predictors import embedding

        with self._lock:
            own = getattr(self.inner, "add_model", None)
            if own is not None:
                own(name, description)
            self._added[name] = description
            self._added_vec[name] = unit_rows(
                embedding.embed([description], encoder_of(self.inner.params))
            )[0]
            if cost is not None:
                self._added_cost[name] = cost

    def knows(self, model: str) -> bool:
        return model in self.inner.models or model in self._added

    def _anchor_weights(self, model: str) -> tuple[list[str], np.ndarray]:
        anchors = [m for m in self.inner.models if m in self._described] or list(self.inner.models)
        if not self._described:  # no descriptions to compare: the trained models alike
            return anchors, np.full(len(anchors), 1.0 / len(anchors))
        sims = np.array([self._described[m] @ self._added_vec[model] for m in anchors])
        w = np.exp((sims - sims.max()) / float(self.guard["temperature"]))
        return anchors, w / w.sum()

    # -- prediction -----------------------------------------------------------------------

    def familiarity(self, queries: Queries) -> np.ndarray:
        """[n] weight in [0, 1]: 1 as close to the training data as its nearest queries are to
        their own task, 0 as far as those are from the other tasks (a local scale: tasks
        differ a lot in how alike their queries are)."""
        emb = queries.ensure_embeddings(encoder_of(self.inner.params)).astype(np.float32)
        k = min(int(self.guard["k"]), len(self._bank))
        sims = emb @ self._bank.T
        near = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        f = np.take_along_axis(sims, near, axis=1).mean(axis=1)
        lo, hi = self._other_tasks[near].mean(axis=1), self._own_task[near].mean(axis=1)
        g = self.guard
        # Where other tasks are about as close as a task's own (one task type under several
        # names), nearness to them is no sign of novelty: the scale keeps a minimum width.
        lo = np.minimum(lo, hi - float(g["min_gap"]))
        w = np.clip((f - lo) / (float(g["reach"]) * (hi - lo)), 0.0, 1.0)
        return w ** float(self.guard["power"])

    def raw_quality(self, queries: Queries, models: list[str]) -> np.ndarray:
        """The wrapped predictor's own predictions, description-only models placed."""
        missing = [m for m in models if not self.knows(m)]
        if missing:
            raise KeyError(
                f"the {self.kind} router was not trained on {', '.join(missing)}; it knows "
                f"{', '.join(self.inner.models)}; add a model by its description"
            )
        # The predictor places its own added models (the graph router), or none is asked for.
        if self._inner_places or not any(m in self._added for m in models):
            return self.inner.predict_quality(queries, models)
        trained = list(self.inner.models)
        base = self.inner.predict_quality(queries, trained)
        col = {m: j for j, m in enumerate(trained)}
        out = np.empty((len(queries), len(models)))
        for i, m in enumerate(models):
            if m in col:
                out[:, i] = base[:, col[m]]
            else:
                anchors, w = self._anchor_weights(m)
                out[:, i] = base[:, [col[a] for a in anchors]] @ w
        return out

    def _prior_of(self, model: str) -> float:
        if model in self._prior:
            return self._prior[model]
        anchors, w = self._anchor_weights(model)
        return float(sum(wi * self._prior.get(a, 0.5) for a, wi in zip(anchors, w, strict=True)))

    def _prior_and_penalty(self, models: list[str]) -> tuple[np.ndarray, np.ndarray]:
        # A model known only by its description is taken as worse than it looks.
        penalty = float(self.guard["margin"]) * np.array([m in self._added for m in models])
        return np.array([self._prior_of(m) for m in models]) - penalty, penalty

    def prior(self, models: list[str]) -> np.ndarray:
        """Each model's quality on average over the training records (a described model's from
        its anchors, less the pessimism margin): what the guard shrinks toward."""
        return self._prior_and_penalty(models)[0]

    def predict_quality(self, queries: Queries, models: list[str]) -> np.ndarray:
        if not self.guard.get("enabled", True):
            return self.raw_quality(queries, models)
        raw = self.raw_quality(queries, models)
        if len(queries) == 0:
            return raw
        w = self.familiarity(queries)[:, None]
        prior, penalty = self._prior_and_penalty(models)
        out = w * (raw - penalty) + (1.0 - w) * prior
        lead = float(self.guard.get("lead", 0.0))
        if lead and len(models) > 1:
            out[:, int(np.argmax(prior))] += lead
        return np.clip(out, 0.0, 1.0)

    def predict_cost(self, queries: Queries, models: list[str]) -> np.ndarray:
        out = np.empty((len(queries), len(models)))
        trained = [m for m in models if m in self.inner.models or m not in self._added_cost]
        if trained:
            got = self.inner.predict_cost(queries, trained)
            for j, m in enumerate(trained):
                out[:, models.index(m)] = got[:, j]
        for m in models:
            if m in self._added_cost:
                out[:, models.index(m)] = self._added_cost[m].predict(queries, [m])[:, 0]
        return out

    # -- artifact -------------------------------------------------------------------------

    def save_weights(self, out: Path) -> dict[str, Any]:
        saved = self.inner.save_weights(out)
        names = sorted(self._described)
        arrays = {
            "bank": self._bank.astype(np.float16),
            "described": np.stack([self._described[m] for m in names])
            if names
            else np.zeros((0, self._bank.shape[1]), np.float32),
            "described_names": np.array(names, dtype=str),
            "own_task": self._own_task,
            "other_tasks": self._other_tasks,
        }
        weights.save_arrays(out / GUARD, arrays)
        return saved

    def manifest_section(self) -> dict[str, Any]:
        return {
            "file": GUARD,
            "params": dict(self.guard),
            "fitted": {"prior": {m: round(v, 6) for m, v in self._prior.items()}},
            "added_models": dict(self._added),
        }

    @classmethod
    def load(cls, inner: Predictor, directory: Path, section: dict[str, Any]) -> GuardedPredictor:
        w = weights.load_arrays(directory / section["file"])
        p, fitted = dict(section["params"]), section["fitted"]
        described = {str(m): v for m, v in zip(w["described_names"], w["described"], strict=True)}
        return cls(
            inner,
            p,
            w["bank"],
            {m: float(v) for m, v in fitted["prior"].items()},
            described,
            w["own_task"],
            w["other_tasks"],
            section.get("added_models"),
        )


def _describe(
    descriptions: dict[str, str] | None, models: list[str], encoder: str
) -> dict[str, np.ndarray]:
    """Unit description embeddings of the trained models that have a description."""
    if not descriptions:
        return {}
    from routers.predictors import embedding

    names = [m for m in models if m in descriptions]
    if not names:
        return {}
    vecs = unit_rows(embedding.embed([descriptions[m] for m in names], encoder))
    return dict(zip(names, vecs, strict=True))
