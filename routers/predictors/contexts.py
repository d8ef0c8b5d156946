"""Query contexts: a coarse clustering of queries by the router's own embedding (k-means,
fitted offline on the training queries and shipped beside the artifact). An online layer keeps
what feedback taught it per (context, model), so a correction learned on math questions does
not move the predictions for trivia.

Stored as `contexts.npz` in the artifact directory: the centroids and the encoder they were
fitted on (a context means nothing under another encoder).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from routers.predictors.base import Queries

CONTEXTS_FILE = "contexts.npz"
DEFAULT_CONTEXTS = 32


@dataclass(frozen=True, slots=True)
class Contexts:
    centroids: np.ndarray  # [k, dim] float32
    encoder: str  # the embedding they were fitted on

    @property
    def count(self) -> int:
        return int(self.centroids.shape[0])

    def assign(self, embeddings: np.ndarray) -> np.ndarray:
        """The nearest centroid of each row (squared Euclidean distance), as ints."""
        e = np.asarray(embeddings, dtype=np.float32)
        c = self.centroids
        dist = (c * c).sum(axis=1)[None, :] - 2.0 * (e @ c.T)
        return dist.argmin(axis=1)

    def of_queries(self, queries: Queries) -> np.ndarray:
        return self.assign(queries.ensure_embeddings(self.encoder))


def fit(queries: Queries, encoder: str, k: int = DEFAULT_CONTEXTS, seed: int = 0) -> Contexts:
    """k-means on the queries' embeddings (k is capped by the number of distinct queries)."""
    from sklearn.cluster import KMeans

    emb = queries.ensure_embeddings(encoder).astype(np.float32)
    k = max(1, min(k, len(np.unique(emb, axis=0))))
    model = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(emb)
    return Contexts(model.cluster_centers_.astype(np.float32), encoder)


def save(contexts: Contexts, directory: str | Path) -> Path:
    path = Path(directory) / CONTEXTS_FILE
    np.savez(path, centroids=contexts.centroids, encoder=np.array(contexts.encoder))
    return path


def load(directory: str | Path) -> Contexts | None:
    """The artifact's contexts; None when it has none (then everything is one context)."""
    path = Path(directory) / CONTEXTS_FILE
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as data:
        return Contexts(data["centroids"].astype(np.float32), str(data["encoder"]))
