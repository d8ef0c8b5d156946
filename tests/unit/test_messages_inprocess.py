"""Anthropic's Messages API through the in-process app, with the official `anthropic` SDK:
the request translated to chat (what the backend gets), the answer, stream and errors back
in Anthropic's shapes, one request log row with api "messages". On real vLLM servers and
every route kind: tests/integration/test_messages_vllm.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anthropic
import pytest

from gateway.backends.base import UpstreamCall
from tests.support.fake_backend import FakeBackends, Reply, fail
from tests.support.inprocess import InProcessGateway, in_process_gateway

MASTER = "master-messages-test"
POLICY = """
version: 1
defaults: {max_tokens: 50}
models:
  small:
    provider: vllm
    endpoints: [http://small.invalid/v1]
    pricing: {input_per_1m: 1.0, output_per_1m: 2.0}
  down:
    provider: vllm
    endpoints: [http://down.invalid/v1]
    pricing: {input_per_1m: 1.0, output_per_1m: 2.0}
routes:
  cheap: {models: [small]}
  broken: {models: [down]}
  cached:
    models: [small]
    cache: {ttl_s: 60}
"""
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}


def _reply(call: UpstreamCall) -> Reply:
    if call.body.get("tools"):
        return Reply("", tool_calls=[("get_weather", '{"city": "Paris"}')])
    return Reply("hi there friend")


def _down(call: UpstreamCall) -> Reply:
    raise fail(503)


@pytest.fixture
async def gw(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[InProcessGateway]:
    monkeypatch.setenv("ROUTEGATE_MASTER_KEY", MASTER)
    fakes = FakeBackends({"small": _reply, "down": _down})
    async with in_process_gateway(POLICY, tmp_path, fakes) as gateway:
        yield gateway


async def test_create_translates_to_chat_and_answers_a_message(gw: InProcessGateway) -> None:
    client = gw.anthropic(MASTER)
    raw = await client.messages.with_raw_response.create(
        model="cheap",
        max_tokens=20,
        system="Be brief.",
        messages=[{"role": "user", "content": [{"type": "text", "text": "Hello?"}]}],
        stop_sequences=["END"],
        metadata={"user_id": "u-1"},
        output_config={"format": {"type": "json_schema", "schema": {"type": "object"}}},
        # This SDK no longer sends sampling fields itself; the API still takes them.
        extra_body={"temperature": 0.5, "top_k": 5},
    )
    message = await raw.parse()
    assert message.type == "message" and message.role == "assistant"
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == "hi there friend"  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (7, 5)
    sent = gw.fakes["small"].calls[-1].body
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello?"},
    ]
    assert (sent["max_tokens"], sent["top_k"], sent["stop"], sent["user"]) == (
        20, 5, ["END"], "u-1",
    )  # fmt: skip
    assert sent["temperature"] == 0.5
    assert sent["response_format"]["json_schema"]["schema"] == {"type": "object"}
    row = await gw.record(raw.headers["x-routegate-request-id"])
    assert (row["api"], row["endpoint_kind"], row["status"]) == ("messages", "chat", 200)
    assert row["cost_usd"] == pytest.approx(7e-6 + 10e-6)


async def test_stream_gives_anthropic_events_and_the_final_message(gw: InProcessGateway) -> None:
    client = gw.anthropic(MASTER)
    async with client.messages.stream(
        model="cheap", max_tokens=20, messages=[{"role": "user", "content": "Hello?"}]
    ) as stream:
        events = [event.type async for event in stream]
        final = await stream.get_final_message()
    assert events[0] == "message_start"
    assert "ping" not in events  # the SDK swallows pings; the order of the rest is checked
    assert events[-1] == "message_stop"
    assert final.content[0].text == "hi there friend"  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (7, 5)


async def test_raw_stream_has_the_exact_event_sequence(gw: InProcessGateway) -> None:
    body = {
        "model": "cheap",
        "max_tokens": 20,
        "stream": True,
        "messages": [{"role": "user", "content": "Hello?"}],
    }
    auth = {"x-api-key": MASTER, "anthropic-version": "2023-06-01"}
    async with gw.client.stream("POST", "/v1/messages", json=body, headers=auth) as resp:
        assert resp.status_code == 200
        names = [line[7:] async for line in resp.aiter_lines() if line.startswith("event: ")]
    assert names[:4] == ["message_start", "ping", "content_block_start", "content_block_delta"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    row = await gw.record(resp.headers["x-routegate-request-id"])
    assert (row["api"], row["stream"], row["completion_tokens"]) == ("messages", 1, 5)


async def test_tools_round_trip_streamed_and_not(gw: InProcessGateway) -> None:
    client = gw.anthropic(MASTER)
    ask = [{"role": "user", "content": "Weather in Paris?"}]
    choice = {"type": "tool", "name": "get_weather"}
    message = await client.messages.create(
        model="cheap", max_tokens=20, messages=ask, tools=[WEATHER], tool_choice=choice
    )
    assert message.stop_reason == "tool_use"
    use = message.content[0]
    assert use.type == "tool_use" and use.name == "get_weather" and use.input == {"city": "Paris"}
    sent = gw.fakes["small"].calls[-1].body
    assert sent["tools"][0]["function"]["parameters"] == WEATHER["input_schema"]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}

    async with client.messages.stream(
        model="cheap", max_tokens=20, messages=ask, tools=[WEATHER], tool_choice={"type": "any"}
    ) as stream:
        final = await stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert final.content[0].type == "tool_use" and final.content[0].input == {"city": "Paris"}
    assert gw.fakes["small"].calls[-1].body["tool_choice"] == "required"

    # The result goes back: the assistant's tool_use and the user's tool_result become chat's
    # tool_calls and a `tool` message.
    follow_up = [
        *ask,
        {"role": "assistant", "content": [use.model_dump()]},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": use.id, "content": "sunny, 21 C"},
                {"type": "text", "text": "So?"},
            ],
        },
    ]
    answer = await client.messages.create(model="cheap", max_tokens=20, messages=follow_up)
    assert answer.content[0].text == "hi there friend"  # type: ignore[union-attr]
    sent = gw.fakes["small"].calls[-1].body["messages"]
    assert sent[1]["tool_calls"][0]["function"] == {
        "name": "get_weather",
        "arguments": '{"city":"Paris"}',
    }
    assert sent[2] == {"role": "tool", "tool_call_id": use.id, "content": "sunny, 21 C"}
    assert sent[3] == {"role": "user", "content": "So?"}


async def test_images_reach_the_backend_as_chat_image_parts(gw: InProcessGateway) -> None:
    client = gw.anthropic(MASTER)
    image = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}
    await client.messages.create(
        model="cheap",
        max_tokens=20,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image", "source": image},
                    {"type": "text", "text": "What is this?"},
                ],
            }
        ],
    )
    parts = gw.fakes["small"].calls[-1].body["messages"][0]["content"]
    assert parts == [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "text", "text": "What is this?"},
    ]


async def test_a_cached_answer_replays_as_a_message_and_as_a_stream(gw: InProcessGateway) -> None:
    client = gw.anthropic(MASTER)
    ask = [{"role": "user", "content": "Cache me"}]
    first = await client.messages.with_raw_response.create(
        model="cached", max_tokens=20, messages=ask, extra_body={"temperature": 0}
    )
    again = await client.messages.with_raw_response.create(
        model="cached", max_tokens=20, messages=ask, extra_body={"temperature": 0}
    )
    assert again.headers["x-routegate-cache"] == "hit"
    assert (await again.parse()).content == (await first.parse()).content
    async with client.messages.stream(
        model="cached", max_tokens=20, messages=ask, extra_body={"temperature": 0}
    ) as stream:
        final = await stream.get_final_message()
    assert final.content[0].text == "hi there friend"  # type: ignore[union-attr]
    assert len(gw.fakes["small"].calls) == 1


async def test_errors_are_anthropic_shaped(gw: InProcessGateway) -> None:
    client = gw.anthropic(MASTER)
    ask = [{"role": "user", "content": "Hello?"}]
    with pytest.raises(anthropic.AuthenticationError) as denied:
        await gw.anthropic("wrong-key").messages.create(model="cheap", max_tokens=5, messages=ask)
    assert denied.value.body["type"] == "error"  # type: ignore[index]
    with pytest.raises(anthropic.NotFoundError) as missing:
        await client.messages.create(model="no-such-route", max_tokens=5, messages=ask)
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError) as bad:
        await client.messages.create(model="cheap", max_tokens=5, messages=[])  # type: ignore[arg-type]
    error = bad.value.body["error"]  # type: ignore[index]
    assert error["type"] == "invalid_request_error" and "messages" in error["message"]
    no_max = await gw.client.post(
        "/v1/messages", json={"model": "cheap", "messages": ask}, headers={"x-api-key": MASTER}
    )
    assert no_max.status_code == 400 and "max_tokens" in no_max.json()["error"]["message"]
    with pytest.raises(anthropic.APIStatusError) as down:
        await client.messages.create(model="broken", max_tokens=5, messages=ask)
    # Every model of the route failed: the gateway's 502, Anthropic's api_error.
    assert down.value.status_code == 502
    assert down.value.body["error"]["type"] == "api_error"  # type: ignore[index]


async def test_count_tokens(gw: InProcessGateway) -> None:
    client = gw.anthropic(MASTER)
    short = await client.messages.count_tokens(
        model="cheap", messages=[{"role": "user", "content": "Hi"}]
    )
    long = await client.messages.count_tokens(
        model="cheap",
        system="You are a helpful assistant.",
        messages=[{"role": "user", "content": "Tell me about the weather in Paris " * 10}],
        tools=[WEATHER],
    )
    assert 0 < short.input_tokens < long.input_tokens
    with pytest.raises(anthropic.NotFoundError):
        await client.messages.count_tokens(
            model="nope", messages=[{"role": "user", "content": "x"}]
        )
    assert gw.fakes.backends["small"].calls == []  # counting calls no model


async def test_metrics_count_requests_and_spend_by_api(gw: InProcessGateway) -> None:
    client = gw.anthropic(MASTER)
    ask = [{"role": "user", "content": "Hello?"}]
    await client.messages.create(model="cheap", max_tokens=5, messages=ask)
    await gw.chat("cheap", key=MASTER)
    with pytest.raises(anthropic.NotFoundError):
        await client.messages.create(model="nope", max_tokens=5, messages=ask)
    text = (await gw.client.get("/metrics", headers={"authorization": f"Bearer {MASTER}"})).text
    assert 'routegate_api_requests_total{api="messages",status="200"} 1.0' in text
    assert 'routegate_api_requests_total{api="messages",status="404"} 1.0' in text
    assert 'routegate_api_requests_total{api="chat",status="200"} 1.0' in text
    assert 'routegate_api_cost_usd_total{api="messages"} 1.7e-05' in text
