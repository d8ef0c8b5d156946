"""Anthropic's Messages API with the official `anthropic` SDK against a real `routegate serve`
on the real demo vLLM servers, on every route kind (fixed, remote through litellm, cost-aware,
learned, cascade, judged cascade, cache, EAD), streaming and not: answers, the SDK's stream
helpers and final message, forced tool calls and their round trip, count_tokens, errors, and
one request log row each with api "messages"."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import pytest

from policies.loader import example_policy_path
from tests.integration.test_chat_tools_vllm import POLICY
from tests.support.gateway import GatewayProcess

pytestmark = pytest.mark.integration

ROUTES = ["fixed", "remote", "cost-aware", "learned", "cascade", "judged", "cached", "ead"]
TOOL_ROUTES = [r for r in ROUTES if r != "ead"]  # EAD refuses tools
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
        "required": ["city"],
        "additionalProperties": False,
    },
}
FORCED = {"type": "tool", "name": "get_weather"}
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def gateway(
    vllm_servers: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    work = tmp_path_factory.mktemp("messages")
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
def client(gateway: GatewayProcess) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key="unused", max_retries=0)


@pytest.mark.parametrize("route", ROUTES)
def test_every_route_answers_a_message_and_a_stream(
    client: anthropic.Anthropic, gateway: GatewayProcess, route: str
) -> None:
    raw = client.messages.with_raw_response.create(
        model=route, max_tokens=8, messages=QUESTION, extra_body={"temperature": 0}
    )
    message = raw.parse()
    assert message.type == "message" and message.content[0].type == "text"
    assert message.content[0].text
    assert message.stop_reason in {"end_turn", "max_tokens"}
    # (EAD counts the tokens both its models generated, so it may report more than 8.)
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0

    with client.messages.stream(
        model=route, max_tokens=8, messages=QUESTION, extra_body={"temperature": 0}
    ) as stream:
        types = [event.type for event in stream]
        final = stream.get_final_message()
    assert types[0] == "message_start" and types[-1] == "message_stop"
    assert "content_block_delta" in types and "message_delta" in types
    assert final.content[0].type == "text" and final.content[0].text
    assert final.stop_reason in {"end_turn", "max_tokens"}
    assert final.usage.output_tokens > 0
    if route == "cached":  # the same request again: the cache answers both shapes
        assert final.content[0].text == message.content[0].text

    record = gateway.record(raw.headers["x-routegate-request-id"])
    assert (record["api"], record["endpoint_kind"], record["status"]) == ("messages", "chat", 200)
    assert record["route"] == route


@pytest.mark.parametrize("route", TOOL_ROUTES)
def test_a_forced_tool_call_round_trips(client: anthropic.Anthropic, route: str) -> None:
    kwargs: dict[str, Any] = {"tools": [WEATHER], "tool_choice": FORCED, "max_tokens": 16}
    message = client.messages.create(model=route, messages=QUESTION, **kwargs)
    use = next(block for block in message.content if block.type == "tool_use")
    assert use.name == "get_weather" and use.input in ({"city": "Paris"}, {"city": "Rome"})

    with client.messages.stream(model=route, messages=QUESTION, **kwargs) as stream:
        final = stream.get_final_message()
    streamed = next(block for block in final.content if block.type == "tool_use")
    assert streamed.name == "get_weather" and streamed.input in (
        {"city": "Paris"},
        {"city": "Rome"},
    )

    follow_up = [
        *QUESTION,
        {"role": "assistant", "content": [use.model_dump()]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "21 C"}],
        },
    ]
    answer = client.messages.create(model=route, messages=follow_up, max_tokens=8, tools=[WEATHER])
    assert answer.content and answer.usage.input_tokens > message.usage.input_tokens


def test_ead_refuses_tools_with_an_anthropic_error(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.messages.create(
            model="ead", messages=QUESTION, max_tokens=8, tools=[WEATHER], tool_choice=FORCED
        )
    error = refused.value.body["error"]  # type: ignore[index]
    assert error["type"] == "invalid_request_error" and "tools" in error["message"]


def test_count_tokens_and_errors(client: anthropic.Anthropic) -> None:
    counted = client.messages.count_tokens(model="fixed", messages=QUESTION, tools=[WEATHER])
    bare = client.messages.count_tokens(model="fixed", messages=QUESTION)
    assert 0 < bare.input_tokens < counted.input_tokens
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(model="no-such-route", max_tokens=8, messages=QUESTION)
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError) as bad:
        client.messages.create(
            model="fixed",
            max_tokens=8,
            messages=[{"role": "user", "content": [{"type": "text"}]}],  # type: ignore[list-item,typeddict-item]
        )
    assert "messages[0].content[0]" in bad.value.body["error"]["message"]  # type: ignore[index]
