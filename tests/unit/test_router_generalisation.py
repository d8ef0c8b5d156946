"""Routers on traffic they never saw: the out-of-distribution guard, several records files with
different models, per-task results, and models added by description (`routers eval`).

Embeddings are the hashed bags of words of test_router_eval, so a topic with words of its own
is as far from the training data as a task type never seen.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from typer.testing import CliRunner

from gateway.cli import app
from routers.offline import evaluate as ev
from routers.predictors import artifact, embedding
from routers.predictors.base import Queries
from routers.records import RecordTable, RoutingRecord
from tests.unit.test_router_eval import fake_embed, write_jsonl

CHEAP, MID, STRONG = "acme/cheap-7b", "acme/mid-30b", "acme/strong-70b"
PRICE = {CHEAP: 1e-7, MID: 1e-6, STRONG: 1e-5}
WORDS = {
    "easy": "capital country city river mountain flag",
    "history": "king war century empire treaty battle",
    "maths": "integral matrix algebra lemma vector proof",  # no hash shared with the others
}
# Seen topics: the cheap model is as good as the strong one, so a router learns to save.
# On maths (never in training) only the strong model is any good.
GOOD = {
    "easy": {CHEAP: 0.9, MID: 0.9, STRONG: 0.9},
    "history": {CHEAP: 0.85, MID: 0.9, STRONG: 0.95},
    "maths": {CHEAP: 0.05, MID: 0.3, STRONG: 0.9},
}


@pytest.fixture(autouse=True)
def _fake_embeddings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedding, "embed", fake_embed)


def records(
    topics: list[str], n: int, models: list[str], seed: int = 0, prefix: str = "q"
) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        topic = topics[i % len(topics)]
        # No words shared across topics (no numbering either): hashed bags of words would
        # make every query a little alike.
        text = " ".join(rng.choice(WORDS[topic].split(), size=4))
        tokens = int(rng.integers(20, 200))
        for model in models:
            rows.append(
                {
                    "query_id": f"{prefix}{i:04d}",
                    "query": text,
                    "task": f"synthetic/{topic}",
                    "model": model,
                    "quality": float(rng.random() < GOOD[topic][model]),
                    "cost_usd": PRICE[model] * (tokens + 1),
                    "input_tokens": tokens,
                    "output_tokens": 1,
                }
            )
    return rows


def table(rows: list[dict[str, Any]]) -> RecordTable:
    return RecordTable.from_records([RoutingRecord.model_validate(r) for r in rows])


def test_the_guard_falls_back_to_each_models_prior_on_a_task_never_seen() -> None:
    train = table(records(["easy", "history"], 200, [CHEAP, STRONG]))
    guarded = artifact.train("knn", train, params={"k": 10})
    bare = artifact.train("knn", train, params={"k": 10, "guard": {"enabled": False}})
    seen = Queries.from_table(table(records(["easy"], 20, [CHEAP, STRONG], seed=3)))
    unseen = Queries.from_table(table(records(["maths"], 20, [CHEAP, STRONG], seed=4)))
    assert guarded.familiarity(seen).mean() > 0.5 > guarded.familiarity(unseen).mean()
    prior = np.nanmean(train.quality, axis=0)
    got = guarded.predict_quality(unseen, [CHEAP, STRONG])
    np.testing.assert_allclose(got, np.tile(prior, (20, 1)), atol=0.05)
    # Without the guard, far-away neighbours still vote; with it, the ranking is the prior's.
    assert (got.argmax(axis=1) == 1).all()
    assert bare.predict_quality(unseen, [CHEAP, STRONG]).shape == (20, 2)


def test_task_split_by_task_reaches_the_strongest_on_the_unseen_task(tmp_path: Path) -> None:
    data = write_jsonl(
        tmp_path / "records.jsonl", records(["easy", "history", "maths"], 240, [CHEAP, STRONG])
    )
    runner = CliRunner()
    result = runner.invoke(
        app,
        ["routers", "train", "--router", "knn", "--data", str(data), "--out",
         str(tmp_path / "knn"), "--param", "k=10"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert artifact.read_manifest(tmp_path / "knn")["inductive"] is True
    result = runner.invoke(
        app,
        ["routers", "eval", "--data", str(data), "--routers", str(tmp_path / "knn"),
         "--split", "task", "--seeds", "3", "--by-task", "--json", str(tmp_path / "e.json")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "per task" in result.output and "synthetic/maths" in result.output
    results = orjson.loads((tmp_path / "e.json").read_bytes())
    (piece,) = results["slices"]
    # Three seeds of a three-fold task split hold every task out exactly once.
    assert sorted(piece["by_task"]) == [f"synthetic/{t}" for t in ("easy", "history", "maths")]
    assert all(entry["runs"] == 1 for entry in piece["by_task"].values())
    maths = piece["by_task"]["synthetic/maths"]["aggregate"]
    strongest = piece["by_task"]["synthetic/maths"]["reference"]["strongest"]
    assert strongest == STRONG
    assert maths["knn"]["aiq_minus_random"]["mean"] >= 0
    assert "best point below always-strongest" not in maths["knn"]["flags"]


def test_two_files_with_different_models_train_together_and_are_judged_apart(
    tmp_path: Path,
) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", records(["easy", "history"], 80, [CHEAP, STRONG]))
    b = write_jsonl(
        tmp_path / "b.jsonl", records(["maths", "easy"], 80, [CHEAP, MID], seed=1, prefix="b")
    )
    runner = CliRunner()
    result = runner.invoke(
        app,
        ["routers", "train", "--router", "knn", "--data", str(a), "--data", str(b),
         "--out", str(tmp_path / "knn")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    manifest = artifact.read_manifest(tmp_path / "knn")
    assert sorted(manifest["models"]) == sorted([CHEAP, MID, STRONG])
    assert [s["queries"] for s in manifest["data"]["sources"]] == [80, 80]
    result = runner.invoke(
        app,
        ["routers", "eval", "--data", str(a), "--data", str(b), "--routers",
         str(tmp_path / "knn"), "--seeds", "1", "--json", str(tmp_path / "e.json")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    pieces = orjson.loads((tmp_path / "e.json").read_bytes())["slices"]
    assert [(p["name"], sorted(p["models"])) for p in pieces] == [
        ("a", sorted([CHEAP, STRONG])),
        ("b", sorted([CHEAP, MID])),
    ]


def test_as_is_adds_unknown_models_by_description_or_judges_on_the_known(
    tmp_path: Path,
) -> None:
    two = write_jsonl(tmp_path / "two.jsonl", records(["easy", "history"], 100, [CHEAP, STRONG]))
    three = write_jsonl(
        tmp_path / "three.jsonl",
        records(["easy", "history"], 60, [CHEAP, MID, STRONG], seed=5, prefix="n"),
    )
    desc = tmp_path / "desc.json"
    desc.write_bytes(
        orjson.dumps(
            {
                CHEAP: "a small cheap model",
                STRONG: "a large strong model",
                MID: "a medium model, between the small and the large",
            }
        )
    )
    runner = CliRunner()
    result = runner.invoke(
        app,
        ["routers", "train", "--router", "knn", "--data", str(two), "--descriptions",
         str(desc), "--out", str(tmp_path / "knn")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    base = ["routers", "eval", "--data", str(three), "--routers", str(tmp_path / "knn"), "--as-is"]
    result = runner.invoke(app, [*base, "--json", str(tmp_path / "plain.json")])
    assert result.exit_code == 0, result.output
    plain = orjson.loads((tmp_path / "plain.json").read_bytes())
    run = plain["slices"][0]["runs"][0]
    assert run["routers"]["knn"]["models_known"] == [CHEAP, STRONG]
    assert run["routers"]["knn"]["operating_point"]["shares"][MID] == 0
    result = runner.invoke(
        app, [*base, "--descriptions", str(desc), "--json", str(tmp_path / "desc.json")]
    )
    assert result.exit_code == 0, result.output
    assert "+1 by description" in result.output
    added = orjson.loads((tmp_path / "desc.json").read_bytes())
    assert added["routers"]["knn"]["added_by_description"] == [MID]
    assert added["slices"][0]["runs"][0]["routers"]["knn"]["models_known"] == [CHEAP, MID, STRONG]


def test_leave_one_llm_out_reports_every_model_and_the_shares(tmp_path: Path) -> None:
    rows = records(["easy", "history", "maths"], 150, [CHEAP, MID, STRONG])
    data = write_jsonl(tmp_path / "records.jsonl", rows)
    desc = tmp_path / "desc.json"
    desc.write_bytes(orjson.dumps({CHEAP: "small", MID: "medium", STRONG: "large"}))
    predictor = artifact.train("knn", table(rows), params={"k": 10})
    artifact.save(
        predictor, tmp_path / "knn", data_sha256="", data_path="", train_query_ids=[], seed=0
    )
    result = CliRunner().invoke(
        app,
        ["routers", "eval", "--data", str(data), "--routers", str(tmp_path / "knn"),
         "--leave-one-llm-out", "--seeds", "1", "--descriptions", str(desc),
         "--json", str(tmp_path / "l.json")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "left out" in result.output and "description share" in result.output
    (piece,) = orjson.loads((tmp_path / "l.json").read_bytes())["slices"]
    per_model = piece["routers"]["knn"]["models"]
    assert sorted(per_model) == sorted([CHEAP, MID, STRONG])
    for v in per_model.values():
        assert v["oracle_with"] >= v["oracle_without"]
        assert v["placed"] is True


def test_recipes_keep_their_guard_parameters(tmp_path: Path) -> None:
    rows = records(["easy", "history"], 60, [CHEAP, STRONG])
    predictor = artifact.train("knn", table(rows), params={"k": 5, "guard": {"margin": 0.2}})
    artifact.save(predictor, tmp_path, data_sha256="", data_path="", train_query_ids=[], seed=0)
    (recipe,) = ev.load_recipes([tmp_path])
    assert recipe.guard is not None and recipe.guard["margin"] == 0.2
    loaded = artifact.load(tmp_path)
    queries = Queries.from_table(table(records(["maths"], 10, [CHEAP, STRONG], seed=2)))
    np.testing.assert_allclose(
        loaded.predict_quality(queries, [CHEAP, STRONG]),
        predictor.predict_quality(queries, [CHEAP, STRONG]),
        atol=1e-3,
    )
