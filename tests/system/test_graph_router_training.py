"""Graph router tests that each train a model of their own (seconds of CPU apiece, on top of
the unit tier's shared one in tests/unit/test_graph_router.py): determinism for a seed, no
neighbours, a held-out task, and the shipped real records. In the system tier for time."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from routers.predictors.graph.predictor import GraphPredictor
from routers.records import RecordTable, split_by_query, split_by_task
from tests.unit.test_graph_router import (
    DEFAULT_TRAIN,
    DESCRIPTIONS,
    PARAMS,
    STRONG,
    WEAK,
    queries_of,
    synthetic_table,
)


@pytest.fixture(scope="module")
def table() -> RecordTable:
    return synthetic_table()


@pytest.fixture(scope="module")
def split(table: RecordTable) -> tuple[RecordTable, RecordTable]:
    return split_by_query(table, seed=0, test_fraction=0.3)


def test_without_neighbours(split) -> None:
    small = split[0].subset(range(200))
    plain = GraphPredictor.train(small, seed=0, descriptions=DESCRIPTIONS, neighbours=0, epochs=20)
    assert plain._g.near_idx.shape == (200, 0) and not plain._similarity
    q = queries_of(split[1].subset(range(20)))
    np.testing.assert_allclose(
        plain._edges(q, [STRONG, WEAK]),
        plain._reference_edges(q, [STRONG, WEAK]),
        rtol=1e-5,
        atol=1e-5,
    )


def test_deterministic_for_a_seed(split) -> None:
    small = split[0].subset(range(200))
    a = GraphPredictor.train(small, seed=3, descriptions=DESCRIPTIONS, hidden=16, epochs=30)
    b = GraphPredictor.train(small, seed=3, descriptions=DESCRIPTIONS, hidden=16, epochs=30)
    q = queries_of(split[1])
    np.testing.assert_array_equal(
        a.predict_quality(q, [STRONG, WEAK]), b.predict_quality(q, [STRONG, WEAK])
    )
    assert a.params["hidden"] == 16 and a.params["epochs"] == 30
    # The evaluator retrains from an artifact's params, which record training's findings too.
    params = {k: v for k, v in a.params.items() if k != "descriptions"}
    c = GraphPredictor.train(small, seed=3, descriptions=DESCRIPTIONS, **params)
    np.testing.assert_array_equal(
        a.predict_quality(q, [STRONG, WEAK]), c.predict_quality(q, [STRONG, WEAK])
    )


def test_held_out_task_gets_predictions(table) -> None:
    train, test = split_by_task(table, seed=1, test_fraction=0.34)
    assert not set(train.tasks) & set(test.tasks)
    router = GraphPredictor.train(train, seed=0, descriptions=DESCRIPTIONS, **PARAMS)
    quality = router.predict_quality(queries_of(test), [STRONG, WEAK])
    assert quality.shape == (len(test), 2) and np.all(np.isfinite(quality))
    assert set(test.tasks) <= set(router._task)  # joined as new task nodes
    # The strong model stays ahead on subjects never seen.
    assert quality[:, 0].mean() > quality[:, 1].mean()


@pytest.mark.skipif(not DEFAULT_TRAIN.exists(), reason="no shipped routing records")
def test_real_records_beat_a_constant() -> None:
    """On 1,000 real MMLU questions (the shipped subset), held-out queries' correctness is
    ranked better than chance for both models, and cost comes out per model."""
    table = RecordTable.load(DEFAULT_TRAIN)
    _, sample = split_by_query(table, seed=0, test_fraction=0.5)
    train, test = split_by_query(sample, seed=0, test_fraction=0.3)
    router = GraphPredictor.train(train, seed=0)
    q = queries_of(test)
    quality = router.predict_quality(q, test.models)
    for j in range(len(test.models)):
        assert roc_auc_score(test.quality[:, j], quality[:, j]) > 0.6
    cost = router.predict_cost(q, test.models)
    strong = int(np.argmax(test.cost.mean(axis=0)))
    assert np.mean(cost[:, strong]) > 10 * np.mean(cost[:, 1 - strong])
