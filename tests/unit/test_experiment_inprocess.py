"""Experiment routes through the in-process app: a stable, weighted arm per caller, served as
the arm route, with the assignment in a header and in the request log row."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.inprocess import InProcessGateway, in_process_gateway

MASTER = "master-test-key"

POLICY = """
version: 1
defaults: {max_tokens: 5}
access: {auth: open}
models:
  fast:
    provider: vllm
    endpoints: [http://fast.invalid/v1]
    pricing: {input_per_1m: 1.0, output_per_1m: 2.0}
  strong:
    provider: vllm
    endpoints: [http://strong.invalid/v1]
    pricing: {input_per_1m: 3.0, output_per_1m: 6.0}
routes:
  cheap: {models: [fast]}
  good: {models: [strong, fast]}
  ab:
    kind: experiment
    arms: {cheap: 1, good: 3}
    sticky: user
  by_key:
    kind: experiment
    arms: {cheap: 1, good: 1}
"""


@pytest.fixture
async def gw(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[InProcessGateway]:
    monkeypatch.setenv("ROUTEGATE_MASTER_KEY", MASTER)
    async with in_process_gateway(POLICY, tmp_path) as gateway:
        yield gateway


async def new_key(gw: InProcessGateway, **spec: object) -> str:
    auth = {"authorization": f"Bearer {MASTER}"}
    resp = await gw.client.post("/admin/keys", json={"team": "t", **spec}, headers=auth)
    assert resp.status_code == 201, resp.text
    return str(resp.json()["secret"])


async def test_the_arm_serves_and_is_in_the_header_and_the_log(gw: InProcessGateway) -> None:
    resp = await gw.chat("ab", user="alice")
    assert resp.status_code == 200, resp.text
    arm = resp.headers["x-routegate-experiment"].removeprefix("ab=")
    assert arm in {"cheap", "good"}
    assert resp.headers["x-routegate-route"] == arm
    assert resp.headers["x-routegate-model"] == ("fast" if arm == "cheap" else "strong")
    row = await gw.record(resp.headers["x-routegate-request-id"])
    assert row["route"] == arm
    assert row["extra"]["experiment"] == {"name": "ab", "arm": arm}


async def test_plain_routes_carry_no_experiment(gw: InProcessGateway) -> None:
    resp = await gw.chat("cheap")
    assert "x-routegate-experiment" not in resp.headers
    assert "experiment" not in (await gw.record(resp.headers["x-routegate-request-id"]))["extra"]


async def test_a_user_keeps_the_arm_and_users_split_by_weight(gw: InProcessGateway) -> None:
    for user in ("alice", "bob", "carol"):
        arms = {
            (await gw.chat("ab", user=user)).headers["x-routegate-experiment"] for _ in range(5)
        }
        assert len(arms) == 1, (user, arms)
    split = Counter()
    for i in range(400):
        split[(await gw.chat("ab", user=f"user-{i}")).headers["x-routegate-experiment"]] += 1
    # Weights 1:3 -> 100 expected on cheap; 4 sigma of Binomial(400, 1/4) is about 35.
    assert 65 <= split["ab=cheap"] <= 135, split
    assert split["ab=cheap"] + split["ab=good"] == 400


async def test_a_key_keeps_its_arm_and_anonymous_callers_do_not(gw: InProcessGateway) -> None:
    for _ in range(3):
        secret = await new_key(gw)
        arms = {
            (await gw.chat("by_key", key=secret)).headers["x-routegate-experiment"]
            for _ in range(6)
        }
        assert len(arms) == 1, arms
    anonymous = {(await gw.chat("by_key")).headers["x-routegate-experiment"] for _ in range(30)}
    assert anonymous == {"by_key=cheap", "by_key=good"}  # (1/2)^29 to see one arm only


async def test_the_key_permission_is_for_the_experiment_asked(gw: InProcessGateway) -> None:
    allowed = await new_key(gw, routes=["by_key"])
    assert (await gw.chat("by_key", key=allowed)).status_code == 200
    only_arm = await new_key(gw, routes=["cheap"])
    refused = await gw.chat("by_key", key=only_arm)
    assert refused.status_code == 403, refused.text


async def test_models_lists_the_experiment_with_its_arms_models(gw: InProcessGateway) -> None:
    data = {m["id"]: m for m in (await gw.client.get("/v1/models")).json()["data"]}
    assert data["ab"]["routegate"]["strategy"] == "experiment"
    assert data["ab"]["routegate"]["models"] == ["fast", "strong"]


async def test_a_stream_is_served_by_the_arm_too(gw: InProcessGateway) -> None:
    first = await gw.chat("ab", user="dora")
    body = {"model": "ab", "user": "dora", "stream": True,
            "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
    async with gw.client.stream("POST", "/v1/chat/completions", json=body) as resp:
        assert resp.status_code == 200
        assert resp.headers["x-routegate-experiment"] == first.headers["x-routegate-experiment"]
        rid = resp.headers["x-routegate-request-id"]
        await resp.aread()
    row = await gw.record(rid)
    assert row["stream"] == 1 and row["extra"]["experiment"]["name"] == "ab"
