"""The routing objective shared by cost-aware routers."""

from __future__ import annotations

from routers.serving.objective import rank_models

PREDICTIONS = {
    "small": {"quality": 0.50, "cost_usd": 0.001},
    "medium": {"quality": 0.70, "cost_usd": 0.004},
    "large": {"quality": 0.90, "cost_usd": 0.020},
}


def test_lambda_trades_quality_for_cost() -> None:
    assert rank_models(PREDICTIONS, lam=0.0) == ["large", "medium", "small"]
    # 0.2 quality for $0.016 more: large wins below lambda 12.5, medium above it.
    assert rank_models(PREDICTIONS, lam=10.0)[0] == "large"
    assert rank_models(PREDICTIONS, lam=20.0)[0] == "medium"
    # 0.2 quality for $0.003 more: medium wins below lambda 66.7.
    assert rank_models(PREDICTIONS, lam=100.0) == ["small", "medium", "large"]


def test_quality_floor_takes_the_cheapest_model_reaching_it() -> None:
    assert rank_models(PREDICTIONS, lam=0.0, quality_floor=0.65)[0] == "medium"
    assert rank_models(PREDICTIONS, lam=0.0, quality_floor=0.95)[0] == "large"  # none reaches
    assert rank_models(PREDICTIONS, lam=0.0, quality_floor=0.4) == ["small", "large", "medium"]


def test_ties_go_to_the_cheaper_model() -> None:
    same = {"x": {"quality": 0.5, "cost_usd": 0.002}, "y": {"quality": 0.5, "cost_usd": 0.001}}
    assert rank_models(same, lam=0.0) == ["y", "x"]
