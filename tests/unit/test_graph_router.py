"""The graph router on a small synthetic table: training, the cached inference path, artifacts,
neighbours (similarity edges, neighbourhood quality) and induction to new queries and models
(by description). Tests that train a model of their own: tests/system/test_graph_router_training.py.

Synthetic world: a strong model is right on almost everything; a weak one on easy subjects
only. Texts are real sentences, embedded with all-MiniLM-L6-v2 like production queries.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from routers.predictors import artifact
from routers.predictors.base import Queries
from routers.predictors.graph.building import describe_task, nearest, pair_quality
from routers.predictors.graph.predictor import GraphPredictor
from routers.records import RecordTable, split_by_query

STRONG, WEAK = "big-frontier", "tiny-fast"
DESCRIPTIONS = {
    STRONG: "A very large frontier language model with excellent reasoning, maths and expert "
    "science knowledge.",
    WEAK: "A tiny, fast and cheap language model with weak reasoning, for simple chit-chat.",
}
# subject -> (question templates, is hard)
SUBJECTS: dict[str, tuple[list[str], bool]] = {
    "arithmetic": (
        ["What is {a} plus {b}?", "Compute {a} times {b}.", "What is {a} minus {b}?"],
        False,
    ),
    "colours": (["What colour do you get mixing red and {c}?", "Is the sky {c} at noon?"], False),
    "greetings": (["Say hello to {n} politely.", "How do I greet {n} in the morning?"], False),
    "quantum_field_theory": (
        [
            "Derive the one-loop beta function of {n} theory with {a} fermion flavours.",
            "Compute the renormalised propagator in {n} gauge theory at order {a}.",
        ],
        True,
    ),
    "number_theory": (
        [
            "Prove that there are infinitely many primes congruent to {a} modulo {b}.",
            "Find all integer solutions of x^{a} + y^{a} = {b} z^2 and prove there are no others.",
        ],
        True,
    ),
    "organic_chemistry": (
        [
            "Propose a stereoselective total synthesis of {n} alkaloid in {a} steps.",
            "Predict the major product of the {n} rearrangement of a {c} cyclohexanone.",
        ],
        True,
    ),
}
NAMES = ["Alice", "Bob", "Yang-Mills", "Dirac", "Kim", "Strychnine", "Cope", "Beckmann"]
COLOURS = ["blue", "yellow", "green", "white", "substituted"]
PARAMS = {"epochs": 150, "patience": 30}
DEFAULT_TRAIN = Path(__file__).resolve().parents[2] / "routers" / "data" / "default_train.jsonl"


def synthetic_table(n_per_subject: int = 80, seed: int = 0) -> RecordTable:
    rng = np.random.default_rng(seed)
    ids, texts, tasks, quality, cost, tokens = [], [], [], [], [], []
    for subject, (templates, hard) in SUBJECTS.items():
        for k in range(n_per_subject):
            text = templates[k % len(templates)].format(
                a=int(rng.integers(2, 99)),
                b=int(rng.integers(2, 99)),
                c=COLOURS[int(rng.integers(len(COLOURS)))],
                n=NAMES[int(rng.integers(len(NAMES)))],
            )
            n_tokens = len(text.split()) + 5
            ids.append(f"{subject}-{k}")
            texts.append(text)
            tasks.append(f"synth/{subject}")
            tokens.append(n_tokens)
            p_weak = 0.15 if hard else 0.9
            quality.append([float(rng.random() < 0.92), float(rng.random() < p_weak)])
            cost.append([n_tokens * 1e-5, n_tokens * 2e-7])
    return RecordTable(
        ids,
        texts,
        tasks,
        [STRONG, WEAK],
        np.array(quality),
        np.array(cost),
        np.array(tokens, float),
        np.ones((len(ids), 2)),
    )


@pytest.fixture(scope="module")
def table() -> RecordTable:
    return synthetic_table()


@pytest.fixture(scope="module")
def split(table: RecordTable) -> tuple[RecordTable, RecordTable]:
    return split_by_query(table, seed=0, test_fraction=0.3)


@pytest.fixture(scope="module")
def router(split: tuple[RecordTable, RecordTable]) -> GraphPredictor:
    return GraphPredictor.train(split[0], seed=0, descriptions=DESCRIPTIONS, **PARAMS)


def queries_of(table: RecordTable, tasks: bool = True) -> Queries:
    q = Queries.from_table(table)
    if not tasks:
        q.tasks = [None] * len(q)
    return q


def test_describe_task() -> None:
    assert describe_task("mmlu/college_physics") == (
        "MMLU multiple-choice questions on college physics"
    )
    assert describe_task("legal") == "legal questions"


def test_nearest_neighbours() -> None:
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(60, 8)).astype(np.float32)
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    idx, sim = nearest(bank, bank, 5, self_rows=True)
    assert idx.shape == sim.shape == (60, 5)
    assert not np.any(idx == np.arange(60)[:, None])  # a query is not its own neighbour
    assert np.all(np.diff(sim, axis=1) <= 0)  # most similar first
    full = bank @ bank.T
    np.fill_diagonal(full, -np.inf)
    np.testing.assert_allclose(sim, -np.sort(-full, axis=1)[:, :5], rtol=1e-5)
    # Neighbours from other tasks only (a task treated as never seen).
    tasks = np.arange(60) % 3
    idx, _ = nearest(bank, bank, 5, bank_task=tasks, emb_task=tasks)
    assert np.all(tasks[idx] != tasks[:, None])
    # One query (numpy's own loop) finds what a batch (BLAS) finds.
    np.testing.assert_array_equal(nearest(bank, bank[:1], 5)[0], nearest(bank, bank, 5)[0][:1])


def test_pair_quality() -> None:
    quality = np.array([[1, 0], [0, np.nan], [1, 1]], np.float32)
    idx, sim = np.array([[0, 1, 2], [1, 1, 1]]), np.array([[0.5, 0.5, 1.0], [0.9, 0.8, 0.7]])
    out = pair_quality(idx, sim, quality, n_llms=3)  # a third LLM added by description
    assert out.shape == (2, 3, 2)
    np.testing.assert_allclose(out[0, :, 0], [0.75, 2 / 3, 0.0], rtol=1e-6)
    np.testing.assert_array_equal(out[0, :, 1], [1, 1, 0])
    # No neighbour has an edge to the second LLM: no neighbourhood quality, flag down.
    np.testing.assert_array_equal(out[1, 1:], 0)


def test_predictions_have_the_right_shape_and_range(router, split) -> None:
    test = split[1]
    quality = router.predict_quality(queries_of(test), [WEAK, STRONG])
    cost = router.predict_cost(queries_of(test), [WEAK, STRONG])
    assert quality.shape == cost.shape == (len(test), 2)
    assert np.all((quality >= 0) & (quality <= 1))
    assert np.all(cost > 0)
    # Cost head: the strong model is priced ~50x the weak one in the records.
    assert np.median(cost[:, 1] / cost[:, 0]) > 10
    assert router.predict_quality(queries_of(test.subset([])), [WEAK]).shape == (0, 1)


def test_better_than_a_constant_on_held_out_queries(router, split) -> None:
    test = split[1]
    quality = router.predict_quality(queries_of(test), [STRONG, WEAK])
    assert roc_auc_score(test.quality[:, 1], quality[:, 1]) > 0.75
    # Without tasks (the gateway's case) the query text alone still separates them.
    blind = router.predict_quality(queries_of(test, tasks=False), [STRONG, WEAK])
    assert roc_auc_score(test.quality[:, 1], blind[:, 1]) > 0.7


def test_cached_path_equals_message_passing_on_the_extended_graph(router, split) -> None:
    q = queries_of(split[1].subset(range(40)))
    q.tasks[:5] = [None] * 5
    q.tasks[5:8] = ["synth/brand_new_subject"] * 3
    fast = router._edges(q, [STRONG, WEAK])
    reference = router._reference_edges(q, [STRONG, WEAK])
    np.testing.assert_allclose(fast, reference, rtol=1e-5, atol=1e-5)
    # A query's prediction does not depend on the rest of its batch.
    single = router.predict_quality(queries_of(split[1].subset([3])), [STRONG, WEAK])
    batch = router.predict_quality(queries_of(split[1].subset(range(10))), [STRONG, WEAK])
    # Batch invariance holds to float32 rounding: BLAS blocks a batch of 10 differently from
    # one row, so sums are reordered. A few hundred float32 ulps of a probability in [0, 1]
    # bound that on any CPU; a real dependence on the batch moves predictions by far more.
    np.testing.assert_allclose(single[0], batch[3], rtol=0, atol=256 * np.finfo(np.float32).eps)


def test_training_outcomes_reach_a_new_query(router, split) -> None:
    """query <- similar training query <- LLM edge: turn the training records around (the weak
    model right, the strong one wrong) and new hard queries' predictions follow. Small shifts:
    here text and task alone tell hard from easy, so the model leans on them too."""
    test = split[1]
    hard = [i for i, t in enumerate(test.tasks) if SUBJECTS[t.split("/")[1]][1]]
    q = queries_of(test.subset(hard))
    before = router.predict_quality(q, [STRONG, WEAK])
    g = router._g
    quality = g.quality.copy()
    quality[:, 0], quality[:, 1] = 0.0, 1.0
    router._g, router._cache = replace(g, quality=quality), None
    try:
        after = router.predict_quality(q, [STRONG, WEAK])
    finally:
        router._g, router._cache = g, None
    assert np.all(after[:, 0] < before[:, 0]) and np.all(after[:, 1] > before[:, 1])


def test_save_load_round_trip(router, split, tmp_path) -> None:
    router.add_model("mid-size", "A mid-sized open model.")
    artifact.save(
        router, tmp_path, data_sha256="0" * 64, data_path="synthetic", train_query_ids=[], seed=0
    )
    loaded = artifact.load(tmp_path)
    assert isinstance(loaded, GraphPredictor)
    assert loaded.models == [STRONG, WEAK]
    q = queries_of(split[1])
    models = [STRONG, WEAK, "mid-size"]
    np.testing.assert_array_equal(
        loaded.predict_quality(q, models), router.predict_quality(q, models)
    )
    np.testing.assert_array_equal(loaded.predict_cost(q, models), router.predict_cost(q, models))
    assert list(tmp_path.glob("*.pkl")) == []


def test_unknown_model_needs_a_description(router, split) -> None:
    q = queries_of(split[1].subset(range(3)))
    with pytest.raises(KeyError, match="add_model"):
        router.predict_quality(q, ["never-heard-of"])


def test_model_added_by_description(router, split) -> None:
    test = split[1]
    hard = [i for i, t in enumerate(test.tasks) if SUBJECTS[t.split("/")[1]][1]]
    router.add_model(
        "frontier-2",
        "A large frontier language model with excellent reasoning and expert knowledge of "
        "maths and science.",
    )
    router.add_model(
        "small-2", "A small, fast and cheap language model with weak reasoning, for chit-chat."
    )
    router.add_model(  # again: a no-op
        "small-2", "A small, fast and cheap language model with weak reasoning, for chit-chat."
    )
    quality = router.predict_quality(queries_of(test.subset(hard)), ["frontier-2", "small-2"])
    assert np.all((quality >= 0) & (quality <= 1))
    assert quality[:, 0].mean() > quality[:, 1].mean() + 0.05
    assert "frontier-2" not in router.models  # trained models only
