"""The online layer's arithmetic (routers/serving/online.py): corrections shrink toward the
model's global residual, old feedback fades, exploration respects a quality floor, and
`OnlineLayer.learn` writes both cells through the state store."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.state import State
from policies.schema import OnlineConfig
from routers.serving.online import GLOBAL, Corrections, OnlineLayer, cell, choose

OFFLINE = {"a": {"quality": 0.8, "cost_usd": 1.0}, "b": {"quality": 0.6, "cost_usd": 1.0}}


def test_no_feedback_leaves_the_offline_prediction() -> None:
    table = Corrections(OnlineConfig(prior_weight=5, noise=0.3))
    mean, sd = table.corrected(3, "a", 0.8)
    assert mean == pytest.approx(0.8) and sd == pytest.approx(0.3 / np.sqrt(5))


def test_feedback_moves_its_context_most_and_others_through_the_model() -> None:
    table = Corrections(OnlineConfig(prior_weight=5, discount=1.0))
    for _ in range(50):
        table.observe(3, "a", 0.8, 0.2, 0.0)  # a is 0.6 worse than predicted in context 3
    here, _ = table.corrected(3, "a", 0.8)
    elsewhere, _ = table.corrected(4, "a", 0.8)
    assert here < elsewhere < 0.8
    assert here == pytest.approx(0.8 + (-30 + 5 * (-30 / 55)) / 55)
    assert table.corrected(3, "b", 0.6)[0] == pytest.approx(0.6)  # b never observed


def test_old_feedback_fades_so_a_recovered_model_is_trusted_again() -> None:
    table = Corrections(OnlineConfig(prior_weight=1, discount=0.9))
    for _ in range(100):
        table.observe(0, "a", 0.8, 0.0, 0.0)
    assert table.corrected(0, "a", 0.8)[0] < 0.1
    for _ in range(40):
        table.observe(0, "a", 0.8, 0.8, 0.0)
    assert table.corrected(0, "a", 0.8)[0] > 0.7


def test_exploration_never_picks_a_model_below_the_quality_floor() -> None:
    table = Corrections(OnlineConfig(explore=1.0, noise=1.0))
    rng = np.random.default_rng(0)
    firsts = {choose(table, 0, OFFLINE, 0.0, 0.7, rng).models[0] for _ in range(200)}
    assert firsts == {"a"}  # b (0.6) would break the floor, however lucky its sample
    anywhere = [choose(table, 0, OFFLINE, 0.0, None, rng) for _ in range(200)]
    assert {c.models[0] for c in anywhere} == {"a", "b"}
    assert all(c.explored == (c.models[0] == "b") for c in anywhere)


def test_no_exploration_share_means_the_greedy_choice() -> None:
    table = Corrections(OnlineConfig(explore=0.0, noise=1.0))
    rng = np.random.default_rng(0)
    assert all(not choose(table, 0, OFFLINE, 0.0, None, rng).explored for _ in range(100))


async def test_learn_updates_the_context_and_the_model_cells(state: State) -> None:
    layer = OnlineLayer("auto", OnlineConfig(discount=0.5))
    await layer.learn("a", {"context": 2, "offline": {"a": 0.8}}, 1.0)  # no store yet: ignored
    layer.bind(state)
    await layer.learn("a", {"context": 2, "offline": {"a": 0.8}}, 1.0)
    await layer.learn("zzz", {"context": 2, "offline": {"a": 0.8}}, 1.0)  # not a candidate
    await layer.refresh()
    cells = layer.snapshot.cells
    assert set(cells) == {cell(2, "a"), cell(GLOBAL, "a")}
    assert cells[cell(2, "a")].mean == pytest.approx(0.2)
