"""Chat completions' remaining fields through the in-process app: image content parts reach the
backend unchanged, `n > 1` is passed on and reserved n times over (refused with a 400 naming `n`
where a route judges one answer), EAD refuses `response_format`, and the usage chunk of
`stream_options.include_usage` comes on every path exactly when asked. The same on real vLLM:
tests/integration/test_chat_tools_vllm.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from gateway.backends.base import UpstreamCall
from gateway.tokens import prompt_tokens_upper
from tests.support.fake_backend import FakeBackends, Reply, fail
from tests.support.inprocess import InProcessGateway, in_process_gateway

MASTER = "master-chat-features"
POLICY = """
version: 1
defaults: {max_tokens: 8, retries: 0}
models:
  fast:
    provider: vllm
    endpoints: [http://fast.invalid/v1]
    pricing: {input_per_1m: 1.0, output_per_1m: 2.0}
  other:
    provider: vllm
    endpoints: [http://other.invalid/v1]
    pricing: {input_per_1m: 1.0, output_per_1m: 2.0}
  down:
    provider: vllm
    endpoints: [http://down.invalid/v1]
    pricing: {input_per_1m: 1.0, output_per_1m: 2.0}
routes:
  fixed: {models: [fast]}
  fallback: {models: [down, fast]}
  cascade:
    kind: cascade
    models: [fast, other]
    confidence: {method: mean_logprob, threshold: -1000}
    stream_hold_tokens: 1
  cached:
    models: [fast]
    cache: {eviction: lru, ttl_s: 600, scope: global}
  ead:
    kind: ead
    small: fast
    large: other
    threshold: 1000
"""
IMAGE = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGD4DwABBAEAwS2OUAAAAABJRU5ErkJggg=="


def fakes() -> FakeBackends:
    def down(call: UpstreamCall) -> Reply:
        raise fail(503)

    sure = Reply("a sure answer", logprobs=[-0.1, -0.1, -0.1])
    return FakeBackends({"fast": lambda call: sure, "other": lambda call: sure, "down": down})


async def events(gw: InProcessGateway, body: dict[str, Any]) -> tuple[httpx.Response, list[dict]]:
    async with gw.client.stream("POST", "/v1/chat/completions", json=body) as resp:
        lines = [line async for line in resp.aiter_lines() if line.startswith("data: {")]
    return resp, [orjson.loads(line[6:]) for line in lines]


async def test_an_image_part_reaches_the_backend_unchanged(tmp_path: Path) -> None:
    parts = [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": IMAGE, "detail": "low"}},
    ]
    async with in_process_gateway(POLICY, tmp_path, fakes()) as gw:
        client = gw.openai()
        out = await client.chat.completions.create(
            model="fixed", messages=[{"role": "user", "content": parts}], max_tokens=4
        )
        assert out.choices[0].message.content
        (call,) = gw.fakes["fast"].calls
    assert call.body["messages"] == [{"role": "user", "content": parts}]


@pytest.mark.parametrize("route", ["fixed", "fallback", "cascade", "cached", "ead"])
async def test_the_usage_chunk_comes_exactly_when_asked(tmp_path: Path, route: str) -> None:
    body = {"model": route, "messages": [{"role": "user", "content": "hi"}], "temperature": 0,
            "stream": True, "max_tokens": 4}  # fmt: skip
    if route == "ead":  # EAD continues text through the completions API, with logprobs
        handler = lambda call: Reply("one two three four", logprobs=[-0.1] * 4)  # noqa: E731
        backends = FakeBackends({"fast": handler, "other": handler})
    else:
        backends = fakes()
    async with in_process_gateway(POLICY, tmp_path, backends) as gw:
        if route == "cached":  # fill the cache, so both streams below are replays
            assert (await gw.chat("cached", "hi", temperature=0, max_tokens=4)).status_code == 200
        for asked in (True, False):
            resp, chunks = await events(
                gw, {**body, "stream_options": {"include_usage": asked}} if asked else body
            )
            assert resp.status_code == 200
            if route == "cached":
                assert resp.headers["x-routegate-cache"] == "hit"
            usage = [c for c in chunks if c.get("usage")]
            text = "".join(
                c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]
            )
            assert text, (route, chunks)
            if asked:
                (last,) = usage
                assert last is chunks[-1] and last["choices"] == []
                assert last["usage"]["completion_tokens"] > 0
            else:
                assert usage == [], (route, asked)


async def test_n_is_passed_on_and_reserved_once_per_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROUTEGATE_MASTER_KEY", MASTER)
    body = {"model": "fixed", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 50}
    worst_one = prompt_tokens_upper(body) * 1e-6 + 50 * 2e-6
    async with in_process_gateway(POLICY, tmp_path, fakes()) as gw:
        auth = {"authorization": f"Bearer {MASTER}"}
        made = await gw.client.post(
            "/admin/keys", json={"team": "t", "budget_usd": 2.5 * worst_one}, headers=auth
        )
        secret = made.json()["secret"]
        key = {"authorization": f"Bearer {secret}"}
        post = gw.client.post
        two = await post("/v1/chat/completions", json={**body, "n": 2}, headers=key)
        assert two.status_code == 200, two.text
        assert gw.fakes["fast"].calls[-1].body["n"] == 2  # passed on as asked
        # Three answers of 50 tokens may cost more than the budget holds: refused up front.
        three = await post("/v1/chat/completions", json={**body, "n": 3}, headers=key)
        assert three.status_code == 429, three.text
        assert three.json()["error"]["code"] == "budget_exceeded"
        assert len(gw.fakes["fast"].calls) == 1
        bad = await post("/v1/chat/completions", json={**body, "n": 0}, headers=key)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "n"


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("route", "fields", "param"),
    [
        ("cascade", {"n": 2}, "n"),
        ("ead", {"n": 2}, "n"),
        ("ead", {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
         "response_format"),
        ("ead", {"response_format": {"type": "json_object"}}, "response_format"),
    ],
)  # fmt: skip
async def test_routes_that_judge_one_free_text_answer_refuse_naming_the_field(
    tmp_path: Path, route: str, fields: dict[str, Any], param: str, stream: bool
) -> None:
    async with in_process_gateway(POLICY, tmp_path, fakes()) as gw:
        resp = await gw.chat(route, stream=stream, **fields)
        assert resp.status_code == 400, resp.text
        err = resp.json()["error"]
        assert err["param"] == param and err["type"] == "invalid_request_error"
        assert gw.fakes["fast"].calls == []  # refused before any model is called
        row = await gw.record(resp.headers["x-routegate-request-id"])
        assert row["status"] == 400 and row["cost_usd"] == 0


async def test_n_above_one_is_never_cached(tmp_path: Path) -> None:
    async with in_process_gateway(POLICY, tmp_path, fakes()) as gw:
        for _ in range(2):
            resp = await gw.chat("cached", temperature=0, n=2)
            assert resp.status_code == 200 and "x-routegate-cache" not in resp.headers
        assert len(gw.fakes["fast"].calls) == 2


JUDGED = (
    POLICY
    + """
  judged:
    kind: cascade
    models: [fast, other]
    confidence: {method: judge, threshold: 0.5, judge_model: other}
    stream_hold_tokens: 1
"""
)
CALL = {"id": "call_1", "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}  # fmt: skip


@pytest.mark.parametrize("stream", [False, True])
async def test_a_cascade_judges_a_tool_call_as_an_answer(tmp_path: Path, stream: bool) -> None:
    def other(call: UpstreamCall) -> Reply:
        return Reply("yes" if call.body.get("max_tokens") == 1 else "strong answer")

    backends = FakeBackends({"fast": lambda call: Reply("", tool_calls=[CALL]), "other": other})
    async with in_process_gateway(JUDGED, tmp_path, backends) as gw:
        resp = await gw.chat("judged", stream=stream, tools=[{"type": "function",
                             "function": {"name": "get_weather"}}])  # fmt: skip
        assert resp.status_code == 200, resp.text
        (judge_call,) = gw.fakes["other"].calls
    judged = judge_call.body["messages"][-1]["content"]
    # The call, not an empty answer (a held stream is judged on what it holds: the call's name
    # comes first, its arguments in later deltas).
    assert "call get_weather " in judged
    if not stream:
        assert 'call get_weather {"city": "Paris"}' in judged
    assert resp.headers["x-routegate-model"] == "fast"  # the judge said yes: the call stands
    if not stream:
        assert resp.json()["choices"][0]["message"]["tool_calls"] == [CALL]
    else:
        assert '"get_weather"' in resp.text


def test_a_cost_aware_route_costs_every_answer() -> None:
    from policies.schema import CostAwareRoute
    from routers.serving.base import RouteContext
    from routers.serving.cost_aware import CostAwareRouter

    config = CostAwareRoute.model_validate({"kind": "cost_aware", "models": ["a"], "lambda": 1})
    router = CostAwareRouter(config, {"a": 0.5}, {"a": lambda p, c, _: c * 1e-6})
    ctx = RouteContext("r", 1.0, 10)
    one = router.route({"max_tokens": 10}, ctx).predictions["a"]["cost_usd"]
    three = router.route({"max_tokens": 10, "n": 3}, ctx).predictions["a"]["cost_usd"]
    assert one == pytest.approx(10e-6) and three == pytest.approx(3 * one)
