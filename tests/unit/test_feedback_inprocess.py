"""POST /v1/feedback through the in-process app: scores stored with the request's log row,
validation naming the field, unknown requests a 404, one learning update per (request, source),
and the gateway's implicit feedback (upstream errors, SLO breaches) recorded beside it. (Keys:
another key's feedback is a 404, tests/system/test_online_feedback_redis.py.)"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from gateway.accounting.request_log import read_feedback
from gateway.backends.base import UpstreamCall
from tests.support.fake_backend import FakeBackends, Reply, fail
from tests.support.inprocess import InProcessGateway, in_process_gateway
from tests.unit.test_online_inprocess import QUESTION, policy

PLAIN = """
version: 1
defaults: {max_tokens: 16, retries: 0}
models:
  flaky:
    provider: vllm
    endpoints: [http://flaky.invalid/v1]
    pricing: {input_per_1m: 1.0, output_per_1m: 1.0}
    fallbacks: [steady]
  steady:
    provider: vllm
    endpoints: [http://steady.invalid/v1]
    pricing: {input_per_1m: 1.0, output_per_1m: 1.0}
routes:
  chain: {models: [flaky, steady]}
  slow: {models: [steady], slo_latency_ms: 20}
"""


async def slow_steady(call: UpstreamCall) -> Reply:
    if call.body["messages"][0]["content"] == "slow":
        await asyncio.sleep(0.05)
    return Reply("fine")


def flaky(call: UpstreamCall) -> Reply:
    raise fail(502, "flaky is down")


async def feedback(gw: InProcessGateway, **body: Any) -> Any:
    return await gw.client.post("/v1/feedback", json=body)


async def rows(gw: InProcessGateway) -> list[dict[str, Any]]:
    await asyncio.to_thread(gw.app.state.services.request_log.flush)
    return read_feedback(gw.settings.log_path)


async def test_feedback_is_stored_and_validated(tmp_path: Path) -> None:
    fakes = FakeBackends({"flaky": flaky, "steady": slow_steady})
    async with in_process_gateway(PLAIN, tmp_path, fakes) as gw:
        answer = await gw.chat("slow", "fast")
        rid = answer.headers["x-routegate-request-id"]
        ok = await feedback(gw, request_id=rid, score=0.75, comment="good enough")
        assert ok.status_code == 200, ok.text
        assert ok.json() == {
            "object": "feedback", "request_id": rid, "source": "user", "score": 0.75,
            "learned": False,
        }  # fmt: skip
        again = await feedback(gw, request_id=rid, thumbs="down")  # replaces, does not add
        assert again.status_code == 200 and again.json()["score"] == 0.0
        judge = await feedback(gw, request_id=rid, score=1, source="judge")
        assert judge.status_code == 200
        got = {(r["source"], r["model"], r["score"]) for r in await rows(gw)}
        assert got == {("user", "steady", 0.0), ("judge", "steady", 1.0)}

        for bad, param in [
            ({"request_id": rid, "score": 1.5}, "score"),
            ({"request_id": rid}, None),
            ({"request_id": rid, "score": 1, "thumbs": "up"}, None),
            ({"request_id": rid, "thumbs": "sideways"}, "thumbs"),
            ({"request_id": rid, "score": 1, "source": "no spaces"}, "source"),
            ({"request_id": rid, "score": 1, "extra": 1}, "extra"),
        ]:
            resp = await feedback(gw, **bad)
            assert resp.status_code == 400, bad
            assert resp.json()["error"]["param"] == param, resp.json()
        unknown = await feedback(gw, request_id="rg-nope", score=1)
        assert unknown.status_code == 404
        assert unknown.json()["error"]["code"] == "request_not_found"
        notjson = await gw.client.post("/v1/feedback", content=b"{")
        assert notjson.status_code == 400


async def test_the_gateway_records_upstream_errors_and_slo_breaches(tmp_path: Path) -> None:
    fakes = FakeBackends({"flaky": flaky, "steady": slow_steady})
    async with in_process_gateway(PLAIN, tmp_path, fakes) as gw:
        chained = await gw.chat("chain", "hello")
        assert chained.status_code == 200 and chained.headers["x-routegate-model"] == "steady"
        slow = await gw.chat("slow", "slow")
        fast = await gw.chat("slow", "fast")
        by_request = {}
        for r in await rows(gw):
            by_request.setdefault(r["request_id"], set()).add((r["source"], r["model"]))
        assert by_request[chained.headers["x-routegate-request-id"]] == {
            ("upstream_error", "flaky")
        }
        assert by_request[slow.headers["x-routegate-request-id"]] == {("slo", "steady")}
        assert fast.headers["x-routegate-request-id"] not in by_request


async def test_feedback_teaches_an_online_route_once_per_source(tmp_path: Path) -> None:
    async with in_process_gateway(policy(explore=0.0), tmp_path) as gw:
        first = await gw.chat("auto", QUESTION)
        rid = first.headers["x-routegate-request-id"]
        one = await feedback(gw, request_id=rid, score=0.0)
        assert one.json()["learned"] is True
        two = await feedback(gw, request_id=rid, score=0.0)
        assert two.status_code == 200 and two.json()["learned"] is False
        other = await feedback(gw, request_id=rid, score=0.0, source="eval")
        assert other.json()["learned"] is True
        runtime = gw.holder.current
        assert runtime is not None
        await runtime.learners["auto"].refresh()  # type: ignore[attr-defined]
        cells = runtime.learners["auto"].snapshot.cells  # type: ignore[attr-defined]
        chosen = first.headers["x-routegate-model"]
        assert cells[f"*|{chosen}"].weight == pytest.approx(1 + 0.9)  # two updates, discounted
