"""Budget pacing through the gateway: a paced cost-aware route moves to the cheap model as
spend runs ahead of plan, and its budget is a hard cap; on both state stores."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.admission.pacing_controller import planned_fraction
from policies.schema import PacingConfig
from tests.support.gateway import GatewayProcess
from tests.support.upstream import Upstream

# The upstream reports 7 prompt + 5 completion tokens.
STRONG_COST = 7 * 10e-6 + 5 * 20e-6
# Enough for a hundred strong answers: the controller moves lambda by at most x1.28 an update,
# so it needs a few updates' worth of spend to turn.
BUDGET = 100 * STRONG_COST

POLICY = """
version: 1
state: {{url: "{state}", prefix: "{prefix}"}}
models:
  cheap:
    provider: vllm
    endpoints: [{up}]
    pricing: {{input_per_1m: 3.3, output_per_1m: 6.7}}
    quality: 0.5
  strong:
    provider: vllm
    endpoints: [{up}]
    pricing: {{input_per_1m: 10.0, output_per_1m: 20.0}}
    quality: 0.9
routes:
  # At a neutral multiplier the strong model wins (0.4 quality for ~$0.00013 more at
  # lambda 800); above a multiplier of about 3.9 the cheap one does.
  paced:
    kind: cost_aware
    models: [cheap, strong]
    lambda: 800
    pacing: {{budget_usd: {budget}, period: day, update_interval_s: 0.03}}
  unpaced:
    kind: cost_aware
    models: [cheap, strong]
    lambda: 800
"""


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    up = Upstream("u").start()
    yield up
    up.stop()


@pytest.fixture(params=["memory", "redis"])
def gateway(
    request: pytest.FixtureRequest, upstream: Upstream, tmp_path: Path
) -> Iterator[GatewayProcess]:
    state = request.getfixturevalue("redis_url") if request.param == "redis" else "memory"
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        POLICY.format(state=state, up=upstream.base_url, prefix=f"p{time.time_ns()}", budget=BUDGET)
    )
    gw = GatewayProcess(policy, tmp_path).start()
    yield gw
    gw.stop()


def ask(gw: GatewayProcess, route: str) -> httpx.Response:
    body = {"model": route, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    return httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=30)


def test_the_route_spends_to_plan_then_gets_cheaper_and_the_budget_holds(
    gateway: GatewayProcess,
) -> None:
    # The uniform plan has this share of the day's budget spent by now: until the spend
    # passes it the route is behind plan and keeps the strong model; past it, it is ahead.
    planned = planned_fraction(PacingConfig(budget_usd=BUDGET, period="day"), time.time())

    models, multipliers, costs = [], [], []
    for _ in range(1000):
        resp = ask(gateway, "paced")
        if resp.status_code == 429:
            break
        assert resp.status_code == 200, resp.text
        models.append(resp.headers["x-routegate-model"])
        multipliers.append(float(resp.headers.get("x-routegate-price-multiplier", "1")))
        costs.append(float(resp.headers["x-routegate-cost-usd"]))
        time.sleep(0.03)  # one controller update per request
    else:
        pytest.fail("the paced route's budget never ran out")

    assert models[0] == "strong"
    assert "cheap" in models, "spend ran ahead of plan and the route never got cheaper"
    switch = models.index("cheap")
    at_switch = sum(costs[:switch]) / BUDGET
    # Behind plan the strong model kept answering; once ahead, routing turned cheap.
    assert planned - 0.05 <= at_switch <= min(1.0, planned + 0.25), (planned, at_switch)
    if at_switch < 0.9:  # (near the end of the day, the budget's edge decides instead)
        assert multipliers[switch] > 3.5
    assert models[switch:].count("strong") <= 2

    # The pacing budget is also a hard cap, and the refusal names it.
    refusal = resp.json()["error"]
    assert refusal["code"] == "budget_exceeded" and "route 'paced'" in refusal["message"]
    assert sum(costs) <= BUDGET + 1e-12
    # Used up to about one cheap worst case. The store counts whole micro-dollars, each charge
    # rounded up, so the cap is reached up to a micro-dollar a request earlier than the exact
    # sum: after midnight the route turns cheap at once and that is ~280 requests.
    assert sum(costs) >= BUDGET - 2e-4 - len(costs) * 1e-6

    # The multiplier and predictions are in the request log; an unpaced route is untouched.
    row = gateway.record(resp.headers["x-routegate-request-id"])
    assert row["status"] == 429 and row["extra"]["price_multiplier"] > 1
    unpaced = ask(gateway, "unpaced")
    assert unpaced.headers["x-routegate-model"] == "strong"
    assert "x-routegate-price-multiplier" not in unpaced.headers
    assert float(unpaced.headers["x-routegate-predicted-quality"]) == pytest.approx(0.9)
