"""Baseline routers (kNN, MF), the offline evaluator and `routegate routers train|eval`.

Embeddings are faked (hashed bags of words) so the tests run in seconds without the sentence
model; the routers and the evaluator only ever see vectors.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import orjson
import pytest
from typer.testing import CliRunner

from gateway.cli import app
from routers.offline import evaluate as ev
from routers.offline import replay
from routers.predictors import artifact, embedding
from routers.predictors.base import Queries
from routers.predictors.knn import KnnPredictor
from routers.predictors.matrix_factorisation import MatrixFactorisationPredictor
from routers.records import RecordTable, RoutingRecord, split_by_query
from routers.serving.objective import rank_models

CHEAP, STRONG = "acme/cheap-7b", "acme/strong-70b"
TOPICS = {
    "easy": "capital country city river mountain flag",
    "history": "king war century empire treaty battle",
    "maths": "integral matrix prime derivative vector proof",
    "law": "statute contract tort plaintiff court appeal",
}
OFF = {"enabled": False}  # fake predictors are judged as they are, without the shrinkage
CHEAP_GOOD = {"easy": 0.9, "history": 0.8, "maths": 0.15, "law": 0.25}


def fake_embed(texts: list[str], *args: Any, **kwargs: Any) -> np.ndarray:
    out = np.zeros((len(texts), embedding.DIM), np.float32)
    for i, text in enumerate(texts):
        for word in text.lower().split():
            out[i, int(hashlib.md5(word.encode()).hexdigest(), 16) % embedding.DIM] += 1.0
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


@pytest.fixture(autouse=True)
def _fake_embeddings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedding, "embed", fake_embed)


def synthetic_records(n_queries: int = 160, seed: int = 0) -> list[dict[str, Any]]:
    """Two models; the cheap one is good at some topics only, the strong one at all."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_queries):
        topic = list(TOPICS)[i % len(TOPICS)]
        words = rng.choice(TOPICS[topic].split(), size=4).tolist()
        text = f"question {i}: " + " ".join(words) + "?"
        tokens = int(rng.integers(20, 200))
        for model, p, price in ((CHEAP, CHEAP_GOOD[topic], 1e-7), (STRONG, 0.9, 1e-5)):
            rows.append(
                {
                    "query_id": f"q{i:04d}",
                    "query": text,
                    "task": f"synthetic/{topic}",
                    "model": model,
                    "quality": float(rng.random() < p),
                    "cost_usd": price * (tokens + 1),
                    "input_tokens": tokens,
                    "output_tokens": 1,
                }
            )
    return rows


def synthetic_table(n_queries: int = 160, seed: int = 0) -> RecordTable:
    records = [RoutingRecord.model_validate(r) for r in synthetic_records(n_queries, seed)]
    return RecordTable.from_records(records)


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return path


# --- predictors used to probe the evaluator ---------------------------------------------------


class _Lookup:
    """Base for fake predictors: remembers the table it trained on."""

    kind: ClassVar[str] = "lookup"
    trained_on: ClassVar[list[list[str]]] = []
    predicted_for: ClassVar[list[list[str]]] = []

    def __init__(self, table: RecordTable, params: dict[str, Any]):
        self.models, self.params = list(table.models), params
        self.table = table

    @classmethod
    def train(cls, table: RecordTable, *, seed: int = 0, descriptions: Any = None, **params: Any):
        cls.trained_on.append(list(table.query_ids))
        return cls(table, params)

    def predict_cost(self, queries: Queries, models: list[str]) -> np.ndarray:
        # Priced from the queries themselves: cost is linear in input tokens in the data.
        price = {CHEAP: 1e-7, STRONG: 1e-5, "a": 1.0, "b": 10.0}
        return np.array([[price[m] * (t + 1) for m in models] for t in queries.input_tokens])


class Perfect(_Lookup):
    """Knows every query's true quality (from the full table it is given at construction)."""

    full: ClassVar[RecordTable]

    def predict_quality(self, queries: Queries, models: list[str]) -> np.ndarray:
        type(self).predicted_for.append(list(queries.texts))
        row = {q: i for i, q in enumerate(self.full.queries)}
        return self.full.quality[[row[t] for t in queries.texts]]


class Constant(_Lookup):
    """The same quality and cost for every query: it can only send all queries one way."""

    def predict_quality(self, queries: Queries, models: list[str]) -> np.ndarray:
        return np.tile([0.6, 0.8], (len(queries), 1))

    def predict_cost(self, queries: Queries, models: list[str]) -> np.ndarray:
        return np.tile([1e-5, 1e-3], (len(queries), 1))


@pytest.fixture
def fake_kinds(monkeypatch: pytest.MonkeyPatch) -> None:
    real = artifact.predictor_class
    fakes = {"perfect": Perfect, "constant": Constant}
    monkeypatch.setattr(artifact, "predictor_class", lambda k: fakes.get(k) or real(k))
    _Lookup.trained_on.clear()
    _Lookup.predicted_for.clear()


# --- replay and metrics ------------------------------------------------------------------------


def test_choice_follows_rank_models_including_ties() -> None:
    rng = np.random.default_rng(1)
    q = rng.choice([0.2, 0.5, 0.8], size=(200, 3))
    c = rng.choice([1.0, 2.0, 4.0], size=(200, 3))
    models = ["x", "y", "z"]
    for lam in (0.0, 0.1, 0.3, 1.0):
        got = replay.choose(q, c, lam)
        for i in range(len(q)):
            pred = {m: {"quality": q[i, j], "cost_usd": c[i, j]} for j, m in enumerate(models)}
            assert models[got[i]] == rank_models(pred, lam)[0]


def test_lambda_grid_ends_with_everything_on_the_cheapest_model() -> None:
    rng = np.random.default_rng(2)
    q, c = rng.random((50, 3)), rng.random((50, 3))
    grid = replay.lambda_grid(q, c)
    assert grid[0] == 0 and np.all(np.diff(grid) > 0)
    assert np.all(replay.choose(q, c, grid[-1]) == c.argmin(axis=1))


def tiny_table() -> RecordTable:
    """4 queries x 2 models, hand-checked below: a costs 1, b costs 10."""
    return RecordTable(
        ["q1", "q2", "q3", "q4"],
        ["w x", "w y", "w z", "w v"],
        ["t"] * 4,
        ["a", "b"],
        np.array([[1.0, 1.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]]),
        np.array([[1.0, 10.0]] * 4),
        np.zeros(4),
        np.ones((4, 2)),
    )


def test_metrics_by_hand_on_a_tiny_table() -> None:
    ref, curves = replay.baseline_curves(tiny_table())
    assert (ref.models[ref.cheapest], ref.models[ref.strongest]) == ("a", "b")
    m = {name: replay.curve_metrics(curve, ref) for name, curve in curves.items()}
    # Oracle: q1, q3, q4 to a (a tie, or both wrong), q2 to b: quality 0.75 at cost 3.25.
    # Hull (1, .5)-(3.25, .75) then flat: AIQ = (1.25/2 x 2.25 + .75 x 6.75) / 9.
    assert m["oracle"]["aiq"] == pytest.approx((0.625 * 2.25 + 0.75 * 6.75) / 9)
    assert m["oracle"]["quality_at_strongest_cost"] == pytest.approx(0.75)
    # 95% of 0.75 = 0.7125, reached 85% of the way from cost 1 to 3.25.
    assert m["oracle"]["cost_to_95"] == pytest.approx(1 + 0.85 * 2.25)
    assert m["oracle"]["cost_to_95_pct"] == pytest.approx(29.125)
    assert m["oracle"]["operating_point"]["shares"] == {"a": 0.75, "b": 0.25}
    # Random: the chord (1, .5)-(10, .75).
    assert m["random"]["aiq"] == pytest.approx(0.625)
    assert m["random"]["cost_to_95_pct"] == pytest.approx(86.5)
    # Single points are steps from their cost.
    assert m["always-cheapest"]["aiq"] == pytest.approx(0.5)
    assert m["always-cheapest"]["cost_to_95"] is None
    assert m["always-strongest"]["aiq"] == 0.0
    assert m["always-strongest"]["cost_to_95_pct"] == pytest.approx(100.0)
    assert m["always-strongest"]["quality_at_strongest_cost"] == pytest.approx(0.75)


def test_envelope_is_the_non_decreasing_upper_hull() -> None:
    cost = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 2.5])
    quality = np.array([0.5, 0.55, 0.8, 0.7, 0.85, 0.4])
    x, y = replay.envelope(cost, quality)
    # (2, .55) lies under the chord (1, .5)-(3, .8); (4, .7) and (2.5, .4) are dominated.
    assert x.tolist() == [1.0, 3.0, 5.0] and y.tolist() == [0.5, 0.8, 0.85]
    assert replay.area((x, y), 1.0, 5.0) == pytest.approx((0.65 * 2 + 0.825 * 2) / 4)
    assert np.isnan(replay.envelope_at((x, y), 0.5)) and replay.envelope_at((x, y), 9.0) == 0.85


def test_perfect_predictor_matches_the_oracle_and_constants_trace_single_models(
    fake_kinds: None,
) -> None:
    table = synthetic_table()
    Perfect.full = table
    recipes = [
        ev.Recipe("perfect", "perfect", {}, guard=OFF),
        ev.Recipe("constant", "constant", {}, guard=OFF),
    ]
    results = ev.evaluate(table, recipes, seeds=[0, 1])
    for run in results["slices"][0]["runs"]:
        r = run["routers"]
        assert r["perfect"]["aiq"] == pytest.approx(r["oracle"]["aiq"])
        singles = {(v["cost"], v["quality"]) for v in run["reference"]["models"].values()}
        curve = r["constant"]["curve"]
        for c, q in zip(curve["cost"], curve["quality"], strict=True):
            assert any(np.isclose(c, sc) and np.isclose(q, sq) for sc, sq in singles)
        assert len(set(curve["cost"])) == 2  # both models, each on its own
        # Two models, strongest also dearest: the hull of the two points is the random chord.
        assert r["constant"]["aiq"] == pytest.approx(r["random"]["aiq"])
        assert r["oracle"]["aiq"] > r["random"]["aiq"]


def test_evaluation_never_trains_on_test_queries(fake_kinds: None) -> None:
    table = synthetic_table()
    Perfect.full = table
    results = ev.evaluate(table, [ev.Recipe("perfect", "perfect", {}, guard=OFF)], seeds=[3, 4])
    assert len(Perfect.trained_on) == 2
    text_of = dict(zip(table.query_ids, table.queries, strict=True))
    for seed, trained, predicted, run in zip(
        (3, 4), Perfect.trained_on, Perfect.predicted_for, results["slices"][0]["runs"], strict=True
    ):
        train, test = split_by_query(table, seed, 0.3)
        assert trained == train.query_ids
        assert predicted == test.queries
        assert not {text_of[q] for q in trained} & set(predicted)
        assert run["n_test"] == len(test) and run["n_train"] == len(train)


def test_task_split_holds_out_whole_tasks(fake_kinds: None) -> None:
    table = synthetic_table()
    Perfect.full = table
    ev.evaluate(table, [ev.Recipe("perfect", "perfect", {}, guard=OFF)], seeds=[0, 1], split="task")
    task_of = dict(zip(table.query_ids, table.tasks, strict=True))
    task_of_text = dict(zip(table.queries, table.tasks, strict=True))
    for trained, predicted in zip(Perfect.trained_on, Perfect.predicted_for, strict=True):
        seen = {task_of[q] for q in trained}
        held = {task_of_text[t] for t in predicted}
        assert seen and held and not seen & held


def test_learned_baselines_beat_random_and_not_the_oracle() -> None:
    table = synthetic_table(240)
    recipes = [ev.Recipe("knn", "knn", {"k": 10}), ev.Recipe("mf", "mf", {"steps": 200})]
    results = ev.evaluate(table, recipes, seeds=[0, 1])
    agg = {name: a["aiq"]["mean"] for name, a in results["slices"][0]["aggregate"].items()}
    for name in ("knn", "mf", "random", "always-cheapest", "always-strongest"):
        assert agg["oracle"] >= agg[name]
    assert agg["knn"] > agg["random"] and agg["mf"] > agg["random"]


# --- predictors and artifacts --------------------------------------------------------------


@pytest.mark.parametrize("cls", [KnnPredictor, MatrixFactorisationPredictor])
def test_artifact_round_trip_predicts_the_same(cls: Any, tmp_path: Path) -> None:
    table = synthetic_table(80)
    params = {"k": 5} if cls is KnnPredictor else {"steps": 50, "dim": 8}
    predictor = cls.train(table, seed=1, **params)
    artifact.save(
        predictor, tmp_path, data_sha256="0" * 64, data_path="x", train_query_ids=[], seed=1
    )
    loaded = artifact.load(tmp_path)
    queries = Queries.from_table(synthetic_table(20, seed=9))
    assert loaded.params == predictor.params
    for method in ("predict_quality", "predict_cost"):
        got = getattr(loaded, method)(queries, [STRONG, CHEAP])
        assert got.shape == (20, 2)
        np.testing.assert_allclose(got, getattr(predictor, method)(queries, [STRONG, CHEAP]))
    with pytest.raises(KeyError, match="not trained on"):
        loaded.predict_quality(queries, ["other/model"])


def test_mf_is_deterministic_by_seed_and_rejects_unknown_params() -> None:
    table = synthetic_table(60)
    queries = Queries.from_table(table)
    a = MatrixFactorisationPredictor.train(table, seed=5, steps=30).predict_quality(
        queries, [CHEAP]
    )
    b = MatrixFactorisationPredictor.train(table, seed=5, steps=30).predict_quality(
        queries, [CHEAP]
    )
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="unknown knn parameter"):
        KnnPredictor.train(table, kk=3)


# --- the CLI -------------------------------------------------------------------------------


def test_cli_train_then_eval_writes_table_json_and_plot(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "records.jsonl", synthetic_records(150))  # 300 lines
    runner = CliRunner()
    for kind, params in (("knn", ["--param", "k=8"]), ("mf", ["--param", "steps=100"])):
        result = runner.invoke(
            app,
            ["routers", "train", "--router", kind, "--data", str(data),
             "--out", str(tmp_path / kind), *params],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        assert "queries: 150 trained on" in result.output
        manifest = artifact.read_manifest(tmp_path / kind)
        assert manifest["kind"] == kind and manifest["data"]["train_queries"] == 150
    result = runner.invoke(
        app,
        ["routers", "eval", "--data", str(data), "--routers",
         f"{tmp_path / 'knn'},{tmp_path / 'mf'}", "--seeds", "2",
         "--json", str(tmp_path / "eval.json"), "--plot", str(tmp_path / "eval.png")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    for name in ("oracle", "knn", "mf", "random", "always-cheapest", "always-strongest", "AIQ"):
        assert name in result.output
    results = orjson.loads((tmp_path / "eval.json").read_bytes())
    assert results["seeds"] == [0, 1] and len(results["slices"][0]["runs"]) == 2
    assert results["slices"][0]["aggregate"]["knn"]["aiq"]["n"] == 2
    assert results["slices"][0]["runs"][0]["routers"]["mf"]["curve"]["lambda"][0] == 0.0
    assert (tmp_path / "eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_eval_as_is_judges_only_held_out_queries(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "records.jsonl", synthetic_records(100))
    runner = CliRunner()
    result = runner.invoke(
        app,
        ["routers", "train", "--router", "knn", "--data", str(data), "--out",
         str(tmp_path / "knn"), "--test-fraction", "0.3", "--seed", "7"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "70 trained on (30 held out by query)" in result.output
    result = runner.invoke(
        app,
        ["routers", "eval", "--data", str(data), "--routers", str(tmp_path / "knn"),
         "--as-is", "--json", str(tmp_path / "eval.json")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    run = orjson.loads((tmp_path / "eval.json").read_bytes())["slices"][0]["runs"][0]
    assert run["n_test"] == 30 and run["n_train"] == 70


def test_cli_bad_data_exits_1_naming_file_and_line(tmp_path: Path) -> None:
    rows = synthetic_records(5)
    rows[2]["quality"] = 2.0
    data = write_jsonl(tmp_path / "bad.jsonl", rows)
    runner = CliRunner()
    train = runner.invoke(
        app,
        ["routers", "train", "--router", "knn", "--data", str(data), "--out", str(tmp_path / "o")],
    )
    assert train.exit_code == 1
    assert f"{data}:3: quality:" in train.output
    assert not (tmp_path / "o").exists()
    good = write_jsonl(tmp_path / "good.jsonl", synthetic_records(20))
    assert runner.invoke(
        app, ["routers", "train", "--router", "knn", "--data", str(good), "--out", str(tmp_path / "k")]
    ).exit_code == 0  # fmt: skip
    evaluated = runner.invoke(
        app, ["routers", "eval", "--data", str(data), "--routers", str(tmp_path / "k")]
    )
    assert evaluated.exit_code == 1
    assert f"{data}:3: quality:" in evaluated.output
    unknown = runner.invoke(
        app,
        ["routers", "train", "--router", "nope", "--data", str(good), "--out", str(tmp_path / "n")],
    )
    assert unknown.exit_code == 1 and "unknown router kind 'nope'" in unknown.output


def test_cli_task_split_of_one_task_says_it_needs_two(tmp_path: Path) -> None:
    rows = [{**r, "task": "synthetic/one"} for r in synthetic_records(20)]
    data = write_jsonl(tmp_path / "one-task.jsonl", rows)
    runner = CliRunner()
    assert runner.invoke(
        app, ["routers", "train", "--router", "knn", "--data", str(data), "--out", str(tmp_path / "k")]
    ).exit_code == 0  # fmt: skip
    result = runner.invoke(
        app,
        ["routers", "eval", "--data", str(data), "--routers", str(tmp_path / "k"),
         "--split", "task", "--seeds", "1"],
    )  # fmt: skip
    assert result.exit_code == 1
    assert "a task split needs records of at least two tasks" in result.output
