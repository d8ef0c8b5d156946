"""Routers' text encoders: the static encoder distilled from MiniLM (the default), the MiniLM
transformer (the reference, and what older artifacts were trained on), the LRU of recent
prompts, and how an artifact records and checks the encoder it was trained on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import orjson
import pytest
from typer.testing import CliRunner

from gateway.cli import app
from policies.artifact_manifest import MANIFEST, ArtifactError
from routers.predictors import artifact, embedding
from routers.predictors.base import Queries
from routers.predictors.static_embedding import MODEL_DIR
from routers.records import RecordTable, RoutingRecord

TEXTS = [
    "How do I bake a loaf of bread at home?",
    "What is a simple recipe for homemade bread?",
    "The central bank raised interest rates by half a point.",
    "def merge(a, b):\n    return sorted(a + b)\n# why is this slow?",
    "Solve for x: 3x^2 - 12x + 9 = 0.",
    "hi",
    "word " * 600,  # longer than the encoder reads
]


def test_static_encoder_is_the_default_and_carries_meaning() -> None:
    v = embedding.embed(TEXTS, embedding.DEFAULT_ENCODER)
    dim = embedding.encoder(embedding.DEFAULT_ENCODER).dim
    assert embedding.DEFAULT_ENCODER == "minilm-static"
    assert v.shape == (len(TEXTS), dim) and v.dtype == np.float32 and dim < embedding.DIM
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2


def test_static_encoder_single_path_equals_batch_and_model2vec() -> None:
    from model2vec import StaticModel

    name = embedding.DEFAULT_ENCODER
    batch = embedding.embed(TEXTS, name)
    single = np.stack([embedding.embed([t], name)[0] for t in TEXTS])
    np.testing.assert_allclose(single, batch, atol=1e-6)
    reference = StaticModel.from_pretrained(MODEL_DIR, force_download=False).encode(TEXTS)
    reference = reference.astype(np.float32)  # model2vec returns float16 vectors
    reference /= np.linalg.norm(reference, axis=1, keepdims=True)
    assert (reference * batch).sum(axis=1).min() > 0.999


def test_recent_prompts_are_served_again_and_never_corrupted() -> None:
    name = embedding.DEFAULT_ENCODER
    prompt = "an agent sends this very prompt again and again"
    first = embedding.embed([prompt], name)
    first[0, :] = 0.0  # the caller's copy: the cached vector must not change
    again = embedding.embed([prompt], name)
    np.testing.assert_allclose(again, embedding.encoder(name).embed([prompt]), atol=1e-7)
    assert np.linalg.norm(again) == pytest.approx(1.0, abs=1e-5)


def test_unknown_encoder_is_named() -> None:
    with pytest.raises(ValueError, match=r"unknown encoder 'bogus'.*minilm-static"):
        embedding.embed(["x"], "bogus")


def _table(n: int = 48) -> RecordTable:
    topics = ("capital river mountain", "integral matrix derivative", "statute court appeal")
    rows = []
    for i in range(n):
        text = f"question {i} about {topics[i % 3]}"
        for model, good in (("cheap", i % 3 == 0), ("strong", True)):
            rows.append(
                RoutingRecord.model_validate(
                    {
                        "query_id": f"q{i}",
                        "query": text,
                        "task": f"t{i % 3}",
                        "model": model,
                        "quality": float(good),
                        "cost_usd": 1e-6 if model == "cheap" else 1e-4,
                        "input_tokens": 20,
                        "output_tokens": 5,
                    }
                )
            )
    return RecordTable.from_records(rows)


def _save(predictor: artifact.Predictor, out: Path) -> Path:
    table = _table()
    return artifact.save(
        predictor, out, data_sha256="", data_path="", train_query_ids=table.query_ids, seed=0
    )


def _predict(predictor: artifact.Predictor) -> np.ndarray:
    queries = Queries(["a question about a river", "a derivative"], [None, None], np.full(2, 9.0))
    return predictor.predict_quality(queries, ["cheap", "strong"])


def test_an_artifact_records_its_encoder_and_loads_with_it(tmp_path: Path) -> None:
    trained = artifact.train("knn", _table(), params={"k": 5})
    assert trained.params["encoder"] == "minilm-static"
    out = _save(trained, tmp_path / "knn")
    manifest = orjson.loads((out / MANIFEST).read_bytes())
    assert manifest["encoder_id"] == embedding.encoder_id("minilm-static")
    assert manifest["encoder_id"].startswith("minilm-static|dim=")
    np.testing.assert_allclose(_predict(artifact.load(out)), _predict(trained), atol=1e-6)


def test_an_artifact_without_an_encoder_was_trained_on_the_transformer(tmp_path: Path) -> None:
    trained = artifact.train("knn", _table(), params={"k": 5, "encoder": "minilm"})
    out = _save(trained, tmp_path / "old")
    manifest = orjson.loads((out / MANIFEST).read_bytes())
    del manifest["params"]["encoder"], manifest["encoder_id"]  # as artifacts were written before
    (out / MANIFEST).write_text(json.dumps(manifest))
    loaded = artifact.load(out)
    assert loaded.params["encoder"] == "minilm"
    np.testing.assert_allclose(_predict(loaded), _predict(trained), atol=1e-6)


def test_an_artifact_from_other_encoder_weights_is_refused(tmp_path: Path) -> None:
    out = _save(artifact.train("knn", _table(), params={"k": 5}), tmp_path / "knn")
    manifest = orjson.loads((out / MANIFEST).read_bytes())
    manifest["encoder_id"] = "minilm-static|dim=256|sha256=0000000000000000"
    (out / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"trained on encoder .*0000000000000000.*retrain"):
        artifact.load(out)


def test_cli_names_an_unknown_encoder(tmp_path: Path) -> None:
    data = tmp_path / "records.jsonl"
    data.write_text("".join(r.model_dump_json() + "\n" for r in _records()))
    result = CliRunner().invoke(
        app,
        ["routers", "train", "--router", "knn", "--data", str(data),
         "--out", str(tmp_path / "x"), "--param", "encoder=bogus"],
    )  # fmt: skip
    assert result.exit_code == 1
    assert "unknown encoder 'bogus'" in result.output and "Traceback" not in result.output


def _records() -> list[RoutingRecord]:
    table = _table()
    return [
        RoutingRecord.model_validate(
            {
                "query_id": q,
                "query": table.queries[i],
                "task": table.tasks[i],
                "model": m,
                "quality": float(table.quality[i, j]),
                "cost_usd": float(table.cost[i, j]),
                "input_tokens": 20,
                "output_tokens": 5,
            }
        )
        for i, q in enumerate(table.query_ids)
        for j, m in enumerate(table.models)
    ]
