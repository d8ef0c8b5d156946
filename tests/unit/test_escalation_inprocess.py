"""The escalation cascade (cascades/escalation.py) through the in-process app: the cheap model is
asked with logprobs; an unsure answer escalates to the strong model, a confident one does not;
every call is charged. (Against real vLLM: tests/integration/test_cascade_routes_vllm.py.)"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from gateway.backends.base import UpstreamCall
from tests.support.fake_backend import FakeBackends, Reply, fail
from tests.support.inprocess import in_process_gateway

POLICY = """
version: 1
defaults: {max_tokens: 16, retries: 0}
models:
  cheap:
    provider: vllm
    endpoints: [http://cheap.invalid/v1]
    pricing: {input_per_1m: 1.0, output_per_1m: 2.0}
  strong:
    provider: vllm
    endpoints: [http://strong.invalid/v1]
    pricing: {input_per_1m: 10.0, output_per_1m: 20.0}
routes:
  cascade:
    kind: cascade
    models: [cheap, strong]
    confidence: {method: mean_logprob, threshold: -1.0}
    stream_hold_tokens: 2
"""

CHEAP_COST = 7 * 1e-6 + 5 * 2e-6
STRONG_COST = 7 * 10e-6 + 5 * 20e-6
SURE = Reply("the answer is four", logprobs=[-0.05, -0.1, -0.02, -0.2])
UNSURE = Reply("maybe it is five", logprobs=[-2.5, -3.0, -1.8, -2.2])


def cheap_says(reply: Reply) -> FakeBackends:
    return FakeBackends({"cheap": lambda call: reply, "strong": lambda call: Reply("four")})


async def test_a_confident_cheap_answer_is_kept(tmp_path: Path) -> None:
    fakes = cheap_says(SURE)
    async with in_process_gateway(POLICY, tmp_path, fakes) as gw:
        resp = await gw.chat("cascade")
        assert resp.status_code == 200, resp.text
        row = await gw.record(resp.headers["x-routegate-request-id"])
    choice = resp.json()["choices"][0]
    assert choice["message"]["content"] == "the answer is four"
    assert choice["logprobs"] is None  # asked for the cascade, not by the client
    assert resp.headers["x-routegate-model"] == "cheap"
    assert resp.headers["x-routegate-cascade-steps"] == "cheap"
    (asked,) = fakes["cheap"].calls
    assert asked.body["logprobs"] is True and asked.body["top_logprobs"] >= 1
    assert "strong" not in fakes.backends or fakes["strong"].calls == []
    assert row["extra"]["escalations"] == 0
    (step,) = row["extra"]["steps"]
    assert step["confidence"] == pytest.approx(sum(SURE.logprobs or []) / 4)
    assert step["escalate"] is False
    assert row["cost_usd"] == pytest.approx(CHEAP_COST)


async def test_an_unsure_cheap_answer_escalates_and_both_calls_are_charged(
    tmp_path: Path,
) -> None:
    fakes = cheap_says(UNSURE)
    async with in_process_gateway(POLICY, tmp_path, fakes) as gw:
        resp = await gw.chat("cascade")
        assert resp.status_code == 200, resp.text
        row = await gw.record(resp.headers["x-routegate-request-id"])
    assert resp.json()["choices"][0]["message"]["content"] == "four"
    assert resp.headers["x-routegate-model"] == "strong"
    assert resp.headers["x-routegate-cascade-steps"] == "cheap,strong"
    assert float(resp.headers["x-routegate-cost-usd"]) == pytest.approx(CHEAP_COST + STRONG_COST)
    # The last model is not scored, so it is not asked for logprobs.
    assert "logprobs" not in fakes["strong"].calls[0].body
    assert row["extra"]["escalations"] == 1
    assert [s["model"] for s in row["extra"]["steps"]] == ["cheap", "strong"]
    assert row["extra"]["steps"][0]["escalate"] is True
    assert row["cost_usd"] == pytest.approx(CHEAP_COST + STRONG_COST)


async def test_an_answer_without_logprobs_is_not_trusted(tmp_path: Path) -> None:
    fakes = cheap_says(Reply("no logprobs here"))
    async with in_process_gateway(POLICY, tmp_path, fakes) as gw:
        resp = await gw.chat("cascade")
    assert resp.headers["x-routegate-model"] == "strong"


async def test_a_failing_strong_model_leaves_the_cheap_answer(tmp_path: Path) -> None:
    def down(call: UpstreamCall) -> Reply:
        raise fail(503)

    fakes = FakeBackends({"cheap": lambda call: UNSURE, "strong": down})
    async with in_process_gateway(POLICY, tmp_path, fakes) as gw:
        resp = await gw.chat("cascade")
        row = await gw.record(resp.headers["x-routegate-request-id"])
    assert resp.status_code == 200 and resp.headers["x-routegate-model"] == "cheap"
    assert "escalation_failed" in row["extra"]
    assert row["cost_usd"] == pytest.approx(CHEAP_COST)  # the failed call cost nothing


@pytest.mark.parametrize(("reply", "model"), [(SURE, "cheap"), (UNSURE, "strong")])
async def test_a_stream_holds_the_first_tokens_then_streams_or_escalates(
    tmp_path: Path, reply: Reply, model: str
) -> None:
    fakes = cheap_says(reply)
    async with in_process_gateway(POLICY, tmp_path, fakes) as gw:
        resp = await gw.chat("cascade", stream=True)
        assert resp.status_code == 200
        row = await gw.record(resp.headers["x-routegate-request-id"])
    chunks = [orjson.loads(e[6:]) for e in resp.text.split("\n\n") if e.startswith("data: {")]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == (reply.text if model == "cheap" else "four")
    assert all(c["choices"][0].get("logprobs") is None for c in chunks if c["choices"])
    assert row["model"] == model
    steps = [s["model"] for s in row["extra"]["steps"]]
    assert steps == (["cheap"] if model == "cheap" else ["cheap", "strong"])
    if model == "cheap":
        assert row["cost_usd"] == pytest.approx(CHEAP_COST) and row["usage_exact"] == 1
    else:
        # The cheap stream was cut after its two held tokens: those are charged, estimated.
        held = 7 * 1e-6 + 2 * 2e-6
        assert row["cost_usd"] == pytest.approx(held + STRONG_COST) and row["usage_exact"] == 0
        assert fakes["cheap"].streams[0].closed
