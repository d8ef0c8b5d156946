"""Tool calls, `response_format` json_schema and `n > 1` with the official openai SDK against a
real `routegate serve` on the real demo vLLM servers, through every route kind (fixed,
cost-aware, learned, cascade, cache), streaming and not; EAD refuses what it cannot give.

The demo models have random weights: with `tool_choice: "auto"` they never call a tool, so each
call is forced by naming the function; vLLM then constrains the arguments by the tool's JSON
schema (an enum here), which makes them deterministic valid JSON."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from policies.loader import example_policy_path
from tests.support.gateway import GatewayProcess

pytestmark = pytest.mark.integration

POLICY = """
version: 1
defaults: {{timeout_s: 60, max_tokens: 16}}
models:
  tiny-small:
    provider: vllm
    endpoints: [{small}]
    quality: 0.4
    pricing: {{input_per_1m: 0.20, output_per_1m: 0.20}}
  tiny-large:
    provider: vllm
    endpoints: [{large}]
    quality: 0.8
    pricing: {{input_per_1m: 10.0, output_per_1m: 30.0}}
  tiny-large-remote:   # the same server through litellm, as a remote model is reached
    provider: litellm
    model: openai/tiny-large
    api_base: {large}
    api_key_env: ROUTEGATE_TEST_REMOTE_KEY
    pricing: {{input_per_1m: 2.50, output_per_1m: 10.00}}
routes:
  fixed: {{models: [tiny-small, tiny-large]}}
  remote: {{models: [tiny-large-remote]}}
  cost-aware: {{kind: cost_aware, models: [tiny-small, tiny-large], lambda: 1}}
  learned:
    kind: learned
    router: {router}
    models: [tiny-small, tiny-large]
    model_map: {{tiny-small: mistralai/Mixtral-8x7B-Instruct-v0.1, tiny-large: gpt-4-1106-preview}}
  cascade:   # every mean logprob is below 0: the cheap answer is scored, then escalated
    kind: cascade
    models: [tiny-small, tiny-large]
    confidence: {{method: mean_logprob, threshold: 0}}
    stream_hold_tokens: 4
  judged:
    kind: cascade
    models: [tiny-small, tiny-large]
    confidence: {{method: judge, threshold: 0.5, judge_model: tiny-large}}
    stream_hold_tokens: 4
  cached:
    models: [tiny-small]
    cache: {{eviction: lru, ttl_s: 600, scope: global}}
  ead: {{kind: ead, small: tiny-small, large: tiny-large, threshold: 1.58, chunk: 4, span: 4}}
"""
ROUTES = ["fixed", "remote", "cost-aware", "learned", "cascade", "judged", "cached"]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
FORCED = {"type": "function", "function": {"name": "get_weather"}}
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]
ANSWER_SCHEMA = {
    "type": "json_schema",
    "json_schema": {
        "name": "verdict",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}, "n": {"const": 3}},
            "required": ["answer", "n"],
            "additionalProperties": False,
        },
    },
}


@pytest.fixture(scope="module")
def gateway(
    vllm_servers: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    work = tmp_path_factory.mktemp("chat-tools")
    policy = work / "policy.yaml"
    router = example_policy_path().parent.parent / "routers/artifacts/complexity-default"
    policy.write_text(
        POLICY.format(
            small=vllm_servers["tiny-small"], large=vllm_servers["tiny-large"], router=router
        )
    )
    env = {"ROUTEGATE_TEST_REMOTE_KEY": "sk-test"}
    gw = GatewayProcess(policy, work, env=env).start(timeout=120)
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture(scope="module")
def client(gateway: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)


def streamed_call(client: openai.OpenAI, **body: Any) -> tuple[dict[str, Any], str | None, Any]:
    """The tool call accumulated from the stream's deltas, the finish reason, the usage."""
    call: dict[str, Any] = {"id": "", "name": "", "arguments": ""}
    finish, usage = None, None
    for chunk in client.chat.completions.create(stream=True, **body):
        usage = chunk.usage or usage
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for delta in choice.delta.tool_calls or []:
                assert delta.index == 0
                call["id"] += delta.id or ""
                if delta.function is not None:
                    call["name"] += delta.function.name or ""
                    call["arguments"] += delta.function.arguments or ""
    return call, finish, usage


@pytest.mark.parametrize("route", ROUTES)
def test_a_tool_round_trip_through_every_route_kind(
    client: openai.OpenAI, gateway: GatewayProcess, route: str
) -> None:
    asked = {"model": route, "messages": QUESTION, "tools": [WEATHER], "tool_choice": FORCED,
             "max_tokens": 16, "temperature": 0}  # fmt: skip
    raw = client.chat.completions.with_raw_response.create(**asked)
    out = raw.parse()
    (call,) = out.choices[0].message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments)["city"] in {"Paris", "Rome"}
    assert out.choices[0].finish_reason in {"stop", "tool_calls"}
    row = gateway.record(raw.headers["x-routegate-request-id"])
    assert row["status"] == 200 and row["cost_usd"] > 0
    if route == "judged":  # the judge read the call, not an empty answer
        assert row["extra"]["steps"][1]["role"] == "judge"

    # Streamed: the SDK's deltas add up to the same kind of call (a cached route replays it).
    streamed, finish, usage = streamed_call(client, **asked, stream_options={"include_usage": True})
    assert streamed["name"] == "get_weather" and streamed["id"]
    assert json.loads(streamed["arguments"])["city"] in {"Paris", "Rome"}
    assert finish in {"stop", "tool_calls"} and usage is not None
    if route == "cached":
        assert json.loads(streamed["arguments"]) == json.loads(call.function.arguments)

    # The second turn: the assistant's call and the tool's result; the model answers in text.
    second = [
        *QUESTION,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"sky": "sunny", "celsius": 21}'},
    ]
    raw = client.chat.completions.with_raw_response.create(
        model=route, messages=second, tools=[WEATHER], max_tokens=6, temperature=0
    )
    answer = raw.parse()
    assert answer.choices[0].message.content and not answer.choices[0].message.tool_calls
    row = gateway.record(raw.headers["x-routegate-request-id"])
    assert row["status"] == 200 and not (row["extra"].get("usage_anomaly"))
    assert answer.usage.prompt_tokens > out.usage.prompt_tokens  # the call and result were sent


@pytest.mark.parametrize("route", ROUTES)
def test_response_format_json_schema_through_every_route_kind(
    client: openai.OpenAI, route: str
) -> None:
    asked = {"model": route, "messages": QUESTION, "response_format": ANSWER_SCHEMA,
             "max_tokens": 40, "temperature": 0}  # fmt: skip
    out = client.chat.completions.create(**asked)
    assert out.choices[0].finish_reason == "stop"
    whole = json.loads(out.choices[0].message.content)
    assert whole["answer"] in {"yes", "no"} and whole["n"] == 3
    text = "".join(
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(stream=True, **asked)
        if c.choices
    )
    assert json.loads(text)["n"] == 3


def test_n_answers_streamed_and_not_and_charged_for_all(
    client: openai.OpenAI, gateway: GatewayProcess
) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="fixed", messages=QUESTION, n=3, max_tokens=5, temperature=0.9, seed=1
    )
    out = raw.parse()
    assert sorted(c.index for c in out.choices) == [0, 1, 2]
    assert all(c.message.content for c in out.choices)
    row = gateway.record(raw.headers["x-routegate-request-id"])
    assert row["completion_tokens"] == out.usage.completion_tokens > 5  # all three are charged
    assert row["cost_usd"] == pytest.approx(
        (out.usage.prompt_tokens * 0.20 + out.usage.completion_tokens * 0.20) / 1e6, rel=1e-6
    )
    texts: dict[int, str] = {}
    usage = None
    for chunk in client.chat.completions.create(
        model="fixed", messages=QUESTION, n=2, max_tokens=5, temperature=0.9, stream=True,
        stream_options={"include_usage": True},
    ):  # fmt: skip
        usage = chunk.usage or usage
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
    assert sorted(texts) == [0, 1] and all(texts.values())
    assert usage is not None and usage.completion_tokens > 5
    for route in ("cascade", "ead"):
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(model=route, messages=QUESTION, n=2, max_tokens=4)
        assert refused.value.body["param"] == "n"


def test_ead_refuses_tools_and_response_format_and_sends_usage_when_asked(
    client: openai.OpenAI,
) -> None:
    for field, value in (("tools", [WEATHER]), ("response_format", ANSWER_SCHEMA)):
        for stream in (False, True):
            with pytest.raises(openai.BadRequestError) as refused:
                client.chat.completions.create(
                    model="ead", messages=QUESTION, max_tokens=4, stream=stream, **{field: value}
                )
            assert refused.value.body["param"] == field
    for asked in (True, False):
        chunks = list(
            client.chat.completions.create(
                model="ead", messages=QUESTION, max_tokens=6, temperature=0, stream=True,
                stream_options={"include_usage": asked},
            )
        )  # fmt: skip
        assert (chunks[-1].usage is not None) is asked
        assert [c for c in chunks if c.usage is not None] == ([chunks[-1]] if asked else [])
