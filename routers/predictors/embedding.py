"""Sentence embeddings for routers: which encoder, one call for one prompt or a batch, and a
disk cache for training sets.

Two encoders, named in a router's parameters (`encoder`) and so in its manifest:
- `minilm-static` (routers' default): MiniLM distilled into per-token vectors
  (`routers.predictors.static_embedding`), 256 dimensions, about 0.1 ms a prompt;
- `minilm`: the all-MiniLM-L6-v2 transformer itself (`routers.predictors.minilm`), 384
  dimensions, 5-10 ms a prompt. It is the reference (what `embed` uses unless told), and what
  artifacts trained before the choice existed, which name none, were trained on.

Vectors are float32, L2-normalised. Training and serving call the same encoder object, so a
router sees the same vectors in both. Recent request prompts are kept in a small LRU: agents
and retries send the same prompt again.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from pathlib import Path
from typing import Protocol

import numpy as np
from cachetools import LRUCache

DEFAULT_ENCODER = "minilm-static"  # what routers train on unless told
REFERENCE_ENCODER = "minilm"  # what `embed` uses unless told
LEGACY_ENCODER = "minilm"  # what an artifact without an `encoder` parameter was trained on
DIM = 384  # the reference encoder's dimensions
ENCODERS = {
    "minilm-static": "routers.predictors.static_embedding:StaticEncoder",
    "minilm": "routers.predictors.minilm:MiniLmEncoder",
}
_RECENT = 4096  # request prompts' embeddings kept per encoder
_SERVING_BATCH = 32  # at most this many texts: a request batch, through the LRU


class Encoder(Protocol):
    id: str  # what produced the vectors: model, settings, weights hash

    @property
    def dim(self) -> int: ...

    def embed(self, texts: list[str]) -> np.ndarray: ...


class _Loaded:
    """An encoder and its recent request prompts' vectors. The LRU is locked: the gateway embeds
    in worker threads."""

    __slots__ = ("encoder", "lock", "recent")

    def __init__(self, encoder: Encoder):
        self.encoder = encoder
        self.recent: LRUCache[str, np.ndarray] = LRUCache(_RECENT)
        self.lock = threading.Lock()


_lock = threading.Lock()
_loaded: dict[str, _Loaded] = {}  # one model per encoder name and process: they are large


def check_encoder(name: str) -> str:
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}: use one of {', '.join(ENCODERS)}")
    return name


def encoder_of(params: dict[str, object]) -> str:
    """The encoder a predictor with these parameters embeds with."""
    return str(params.get("encoder", LEGACY_ENCODER))


def _get(name: str) -> _Loaded:
    loaded = _loaded.get(name)
    if loaded is not None:
        return loaded
    import importlib

    module, cls = ENCODERS[check_encoder(name)].split(":")
    with _lock:
        if name not in _loaded:
            _loaded[name] = _Loaded(getattr(importlib.import_module(module), cls).load())
        return _loaded[name]


def encoder(name: str = REFERENCE_ENCODER) -> Encoder:
    return _get(name).encoder


def encoder_id(name: str = REFERENCE_ENCODER) -> str:
    """What produced the vectors: part of every cache key, and recorded with a router."""
    if name == "minilm" and name not in _loaded:  # no model load just to name it
        from routers.predictors.minilm import encoder_id as minilm_id

        return minilm_id()
    return _get(name).encoder.id


def embed(texts: list[str], encoder: str = REFERENCE_ENCODER) -> np.ndarray:
    """[len(texts), dim] float32, unit length. A request batch (the gateway's case: up to
    `_SERVING_BATCH` texts) reads recent prompts from the LRU and embeds the rest in one call;
    a training batch goes to the encoder whole."""
    loaded = _get(encoder)
    texts = list(texts)
    if not texts:
        return np.zeros((0, loaded.encoder.dim), np.float32)
    if len(texts) > _SERVING_BATCH:
        return loaded.encoder.embed(texts)
    with loaded.lock:
        found = [loaded.recent.get(t) for t in texts]
    missing = list(dict.fromkeys(t for t, v in zip(texts, found, strict=True) if v is None))
    if missing:
        fresh = dict(zip(missing, loaded.encoder.embed(missing), strict=True))
        with loaded.lock:
            for text, vector in fresh.items():
                vector.setflags(write=False)  # shared by every later caller of this prompt
                loaded.recent[text] = vector
        found = [fresh[t] if v is None else v for t, v in zip(texts, found, strict=True)]
    return np.stack(found)  # a fresh array: callers may write to it


def cache_dir_default() -> Path:
    root = os.environ.get("ROUTEGATE_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "routegate"
    return base / "embeddings"


def cache_key(texts: list[str], encoder: str = REFERENCE_ENCODER) -> str:
    h = hashlib.sha256(encoder_id(encoder).encode())
    for text in texts:
        data = text.encode("utf-8", "surrogatepass")
        h.update(len(data).to_bytes(8, "little"))  # length-prefixed: no two lists collide
        h.update(data)
    return h.hexdigest()


def embed_cached(
    texts: list[str], encoder: str = REFERENCE_ENCODER, cache_dir: str | Path | None = None
) -> np.ndarray:
    """`embed(texts)`, kept on disk as `<cache_dir>/<sha256>.npy` so that training, evaluation
    and experiments embed a data set once. A damaged or mismatched file is recomputed."""
    texts = list(texts)
    if not texts:
        return embed(texts, encoder)
    directory = Path(cache_dir) if cache_dir is not None else cache_dir_default()
    path = directory / f"{cache_key(texts, encoder)}.npy"
    try:
        cached = np.load(path, allow_pickle=False)
        if cached.shape[0] == len(texts) and cached.ndim == 2 and cached.dtype == np.float32:
            return cached
    except (OSError, ValueError, EOFError):
        pass
    vectors = np.ascontiguousarray(embed(texts, encoder), dtype=np.float32)
    tmp: str | None = None
    try:
        directory.mkdir(parents=True, exist_ok=True)
        # Write then rename: a reader never sees half a file.
        with tempfile.NamedTemporaryFile(dir=directory, suffix=".tmp", delete=False) as f:
            tmp = f.name
            np.save(f, vectors, allow_pickle=False)
        os.replace(tmp, path)
    except OSError:  # a read-only or full disk only costs time
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    return vectors
