"""`plan: learned`: the previous period's traffic shape in the request log becomes this
period's plan, mixed with uniform; with no history the plan is uniform. Through `Pacers` (what
the gateway uses) on the unit tier's state store."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.accounting.request_log import RequestLog, RequestRecord
from gateway.admission.learned_plan import MIX, previous_window, shape_weights
from gateway.admission.pacing_controller import planned_fraction
from gateway.admission.price_multiplier import Pacers
from gateway.state import State
from policies.loader import parse_policy
from policies.schema import CostAwareRoute, PacingConfig

TODAY = datetime(2026, 12, 2, tzinfo=UTC).timestamp()


def test_shape_weights_mix_the_past_shape_with_uniform() -> None:
    w = shape_weights([0.0, 3.0, 1.0, 0.0], [0, 5, 1, 0])
    assert w is not None and sum(w) == pytest.approx(1.0)
    assert w[0] == pytest.approx(MIX / 4)  # an empty slice still gets a little
    assert w[1] == pytest.approx((1 - MIX) * 0.75 + MIX / 4)
    counted = shape_weights([0.0, 0.0], [1, 3])  # nothing spent: request counts shape it
    assert counted == pytest.approx([(1 - MIX) * 0.25 + MIX / 2, (1 - MIX) * 0.75 + MIX / 2])
    assert shape_weights([0.0, 0.0], [0, 0]) is None


def test_the_previous_window_is_yesterday_last_week_or_last_month() -> None:
    start, end = previous_window("day", TODAY + 3600)
    assert (start, end) == (TODAY - 86400, TODAY)
    start, end = previous_window("month", TODAY)
    assert datetime.fromtimestamp(start, UTC) == datetime(2026, 11, 1, tzinfo=UTC)


def test_a_policy_may_name_the_learned_plan() -> None:
    text = """
version: 1
models:
  m: {provider: vllm, endpoints: [http://m.invalid/v1], pricing: {input_per_1m: 1, output_per_1m: 1}}
routes:
  r: {models: [m], pacing: {budget_usd: 5, period: day, plan: learned}}
"""
    policy = parse_policy(text, "p.yaml")
    assert policy.routes["r"].pacing.plan == "learned"  # type: ignore[union-attr]


def write_yesterday(log: Path, route: str, hours: list[int]) -> None:
    request_log = RequestLog(log)
    for i, hour in enumerate(hours):
        ts = TODAY - 86400 + hour * 3600 + 60
        request_log.write(RequestRecord(f"rg-{i}", ts, "chat", False, route=route, cost_usd=0.01))
    request_log.flush()
    request_log.close()


async def test_yesterdays_evening_traffic_shapes_todays_plan(state: State, tmp_path: Path) -> None:
    log = tmp_path / "requests.sqlite"
    write_yesterday(log, "paced", [18, 19, 20, 21] * 5)  # all of yesterday's spend: 18-22 h
    pacing = PacingConfig(budget_usd=1.0, period="day", plan="learned")
    pacers = Pacers(state, log)
    learned = await pacers.plan_for(pacing, "route", "paced", TODAY + 600)
    assert isinstance(learned.plan, list) and len(learned.plan) == 24
    noon, evening = TODAY + 12 * 3600, TODAY + 22 * 3600
    assert planned_fraction(learned, noon) == pytest.approx(MIX * 12 / 24)
    assert planned_fraction(learned, evening) == pytest.approx((1 - MIX) + MIX * 22 / 24)
    # Another route had no traffic yesterday: uniform.
    other = await pacers.plan_for(pacing.model_copy(), "route", "quiet", TODAY + 600)
    assert other.plan == "uniform"
    assert planned_fraction(other, noon) == pytest.approx(0.5)
    # The gateway's multiplier for a learned-plan route runs on the learned curve.
    route = CostAwareRoute(kind="cost_aware", models=["m"], pacing=pacing)
    assert 0 < await pacers.multiplier(None, "paced", route) <= pacing.max_multiplier
