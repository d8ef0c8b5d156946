"""Budget pacing in-process: `Pacers` gives a paced route a price multiplier that moves with its
spend, and through the app a paced cost-aware route turns to the cheap model when its spend runs
ahead of plan. (The plan curves and the controller step: test_pacing.py; a whole day of traffic
through `routegate serve`: tests/system/test_pacing_gateway.py.)"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from gateway.admission.access import route_budget
from gateway.admission.price_multiplier import Pacers
from gateway.state import MemoryState, State
from policies.schema import CostAwareRoute, PacingConfig
from tests.support.inprocess import in_process_gateway

PACING = PacingConfig(budget_usd=1.0, period="day", update_interval_s=0.02)
PACED = CostAwareRoute(kind="cost_aware", models=["cheap", "strong"], pacing=PACING)
UNPACED = CostAwareRoute(kind="cost_aware", models=["cheap", "strong"])
# Long enough that two calls in a row fall within one interval on a loaded CI machine.
STEADY = CostAwareRoute(
    kind="cost_aware",
    models=["cheap", "strong"],
    pacing=PacingConfig(budget_usd=1.0, period="day", update_interval_s=0.5),
)


async def spend(state: State, route: str, usd: float) -> None:
    """Charge the paced route's budget as a settled request would."""
    budget = route_budget(route, PACING, time.time())
    assert (await state.reserve(budget.name, "pre", usd, budget.limit_usd, 60, time.time())).ok
    await state.settle(budget.name, "pre", usd)


async def test_an_unpaced_route_and_no_route_have_a_neutral_multiplier(state: State) -> None:
    pacers = Pacers(state)
    assert await pacers.multiplier(None, "plain", UNPACED) == 1.0
    assert await pacers.multiplier(None, None, None) == 1.0
    assert pacers.budgets(None, "plain", UNPACED, time.time()) == []


async def test_a_paced_routes_multiplier_rises_when_spend_runs_ahead(state: State) -> None:
    pacers = Pacers(state)
    (budget,) = pacers.budgets(None, "paced", STEADY, time.time())
    assert (budget.limit_usd, budget.name) == (1.0, route_budget("paced", PACING, time.time()).name)

    idle = await pacers.multiplier(None, "paced", STEADY)
    assert 0 < idle <= 1.0  # nothing spent: at or behind plan
    await spend(state, "paced", 0.995)  # nearly all of today's budget, at any hour of the day
    # Between updates the cached multiplier stands; after the interval the spend is read.
    assert await pacers.multiplier(None, "paced", STEADY) == idle
    assert STEADY.pacing is not None
    await asyncio.sleep(STEADY.pacing.update_interval_s * 2)
    ahead = await pacers.multiplier(None, "paced", STEADY)
    assert ahead > 10 * idle and ahead <= STEADY.pacing.max_multiplier


async def test_pacers_sharing_a_state_agree(state: State) -> None:
    a, b = Pacers(state), Pacers(state)
    await spend(state, "paced", 0.995)
    first = await a.multiplier(None, "paced", PACED)
    assert await b.multiplier(None, "paced", PACED) == first  # the stored step is reused


POLICY = """
version: 1
defaults: {max_tokens: 16}
models:
  cheap:
    provider: vllm
    endpoints: [http://cheap.invalid/v1]
    pricing: {input_per_1m: 1.0, output_per_1m: 2.0}
    quality: 0.5
  strong:
    provider: vllm
    endpoints: [http://strong.invalid/v1]
    pricing: {input_per_1m: 10.0, output_per_1m: 20.0}
    quality: 0.9
routes:
  # At a neutral multiplier the strong model wins (0.4 quality for ~$0.0003 more at lambda
  # 800); above a multiplier of about 1.7 the cheap one does.
  paced:
    kind: cost_aware
    models: [cheap, strong]
    lambda: 800
    pacing: {budget_usd: 1.0, period: day, update_interval_s: 0.02}
"""


async def test_a_paced_route_turns_cheap_when_its_spend_runs_ahead(tmp_path: Path) -> None:
    async with in_process_gateway(POLICY, tmp_path) as gw:
        before = await gw.chat("paced", max_tokens=16)
        assert before.status_code == 200 and before.headers["x-routegate-model"] == "strong"
        assert float(before.headers.get("x-routegate-price-multiplier", "1")) <= 1.0

        state: State = gw.app.state.services.access.state
        assert isinstance(state, MemoryState)
        await spend(state, "paced", 0.995)
        await asyncio.sleep(0.05)  # past the update interval
        after = await gw.chat("paced", max_tokens=16)
        assert after.status_code == 200, after.text
        assert after.headers["x-routegate-model"] == "cheap"
        multiplier = float(after.headers["x-routegate-price-multiplier"])
        assert multiplier > 1.6
        row = await gw.record(after.headers["x-routegate-request-id"])
    assert row["extra"]["price_multiplier"] == pytest.approx(multiplier, rel=1e-3)
    assert row["model"] == "cheap"
