"""Admission through the in-process app: keys, route permissions, the rpm limit and hard budgets,
and the cost charged to the key. The same through `routegate serve` on both state stores:
tests/system/test_keys_budgets.py."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.tokens import prompt_tokens_upper
from tests.support.inprocess import InProcessGateway, in_process_gateway

MASTER = "master-test-key"
COST = 7 * 1e-6 + 5 * 2e-6  # a fake reply: 7 prompt + 5 completion tokens

POLICY = """
version: 1
defaults: {max_tokens: 5, reservation_ttl_s: 30}
models:
  fast:
    provider: vllm
    endpoints: [http://fast.invalid/v1]
    pricing: {input_per_1m: 1.0, output_per_1m: 2.0}
routes:
  cheap: {models: [fast]}
  other: {models: [fast]}
"""


@pytest.fixture
async def gw(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[InProcessGateway]:
    monkeypatch.setenv("ROUTEGATE_MASTER_KEY", MASTER)
    async with in_process_gateway(POLICY, tmp_path) as gateway:
        yield gateway


async def admin(
    gw: InProcessGateway, method: str, path: str, json: dict[str, Any] | None = None
) -> httpx.Response:
    auth = {"authorization": f"Bearer {MASTER}"}
    return await gw.client.request(method, path, json=json, headers=auth)


async def new_key(gw: InProcessGateway, **spec: object) -> tuple[str, str]:
    resp = await admin(gw, "POST", "/admin/keys", {"team": "search", **spec})
    assert resp.status_code == 201, resp.text
    return resp.json()["id"], resp.json()["secret"]


async def test_a_master_key_means_every_request_needs_a_valid_key(gw: InProcessGateway) -> None:
    missing = await gw.chat("cheap")
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "missing_api_key"
    wrong = await gw.chat("cheap", key="not-a-key")
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    assert gw.fakes["fast"].calls == []

    key_id, secret = await new_key(gw)
    ok = await gw.chat("cheap", key=secret)
    assert ok.status_code == 200
    row = await gw.record(ok.headers["x-routegate-request-id"])
    assert (row["api_key_id"], row["team"]) == (key_id, "search")

    assert (await admin(gw, "DELETE", f"/admin/keys/{key_id}")).status_code == 200
    revoked = await gw.chat("cheap", key=secret)
    assert revoked.status_code == 401 and revoked.json()["error"]["code"] == "key_revoked"
    assert len(gw.fakes["fast"].calls) == 1


async def test_the_admin_api_needs_the_master_key(gw: InProcessGateway) -> None:
    _, secret = await new_key(gw)
    resp = await gw.client.get("/admin/keys", headers={"authorization": f"Bearer {secret}"})
    assert resp.status_code == 401 and resp.json()["error"]["code"] == "invalid_master_key"
    listed = (await admin(gw, "GET", "/admin/keys")).json()["data"]
    assert len(listed) == 1 and "secret" not in listed[0] and "secret_hash" not in listed[0]


async def test_a_key_limited_to_a_route_gets_403_elsewhere(gw: InProcessGateway) -> None:
    _, secret = await new_key(gw, routes=["cheap"])
    assert (await gw.chat("cheap", key=secret)).status_code == 200
    refused = await gw.chat("other", key=secret)
    assert refused.status_code == 403
    err = refused.json()["error"]
    assert err["code"] == "model_not_allowed" and "may not use 'other'" in err["message"]


async def test_the_requests_per_minute_limit_refuses_with_retry_after(gw: InProcessGateway) -> None:
    _, secret = await new_key(gw, rpm=2)
    for _ in range(2):
        assert (await gw.chat("cheap", key=secret)).status_code == 200
    refused = await gw.chat("cheap", key=secret)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(refused.headers["retry-after"]) <= 120
    assert len(gw.fakes["fast"].calls) == 2  # the refused request never reached a model


async def test_a_budget_is_charged_the_cost_and_refuses_past_it(gw: InProcessGateway) -> None:
    budget = 10.5 * COST
    key_id, secret = await new_key(gw, budget_usd=budget, period="month")
    # Each request reserves its worst case (the prompt's upper bound, max_tokens answered) and
    # is charged its actual cost: the last one admitted is the one whose worst case still fits.
    body = {"model": "cheap", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 5}
    worst = prompt_tokens_upper(body) * 1e-6 + 5 * 2e-6
    fits = math.floor((budget - worst) / COST + 1e-9) + 1
    answered, costs = 0, 0.0
    refused: httpx.Response | None = None
    for _ in range(10):
        resp = await gw.chat("cheap", key=secret, max_tokens=5)
        if resp.status_code != 200:
            refused = resp
            break
        answered += 1
        costs += float(resp.headers["x-routegate-cost-usd"])
    assert refused is not None and refused.status_code == 429
    err = refused.json()["error"]
    assert err["code"] == "budget_exceeded" and f"API key {key_id} (team search)" in err["message"]
    assert answered == fits and len(gw.fakes["fast"].calls) == fits
    assert fits >= 8  # the worst-case bound is not so loose that it wastes the budget
    key = (await admin(gw, "GET", f"/admin/keys/{key_id}")).json()
    assert key["spent_usd"] == pytest.approx(costs) == pytest.approx(fits * COST)
    assert key["reserved_usd"] == 0 and key["spent_usd"] <= key["budget_usd"]
    row = await gw.record(refused.headers["x-routegate-request-id"])
    assert row["status"] == 429 and row["cost_usd"] == 0


async def test_a_stream_is_charged_to_the_key(gw: InProcessGateway) -> None:
    key_id, secret = await new_key(gw, budget_usd=1.0)
    resp = await gw.chat("cheap", key=secret, stream=True, max_tokens=5)
    assert resp.status_code == 200 and resp.text.endswith("data: [DONE]\n\n")
    key = (await admin(gw, "GET", f"/admin/keys/{key_id}")).json()
    assert key["spent_usd"] == pytest.approx(COST) and key["reserved_usd"] == 0


@pytest.mark.parametrize("period", ["day", "month", "total"])
async def test_a_budget_refusal_says_when_the_budget_resets(
    gw: InProcessGateway, period: str
) -> None:
    _, secret = await new_key(gw, budget_usd=1e-7, period=period)  # below any worst case
    refused = await gw.chat("cheap", key=secret)
    now = datetime.now(UTC)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "budget_exceeded"
    if period == "total":  # it never resets: no time to give
        assert "retry-after" not in refused.headers
        return
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    end = day + timedelta(days=1)
    if period == "month":
        end = (day.replace(day=1) + timedelta(days=32)).replace(day=1)
    assert abs(int(refused.headers["retry-after"]) - (end - now).total_seconds()) <= 2
