"""OpenAI's Responses API through the in-process app, with the official `openai` SDK: the
request translated to chat (what the backend gets), the response object, the typed stream
events and the errors back, one request log row with api "responses". On real vLLM servers
and every route kind: tests/integration/test_responses_vllm.py."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import openai
import pytest

from gateway.backends.base import UpstreamCall
from tests.support.fake_backend import FakeBackends, Reply, fail
from tests.support.inprocess import InProcessGateway, in_process_gateway

MASTER = "master-responses-test"
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
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}
TEXT_EVENTS = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


def _reply(call: UpstreamCall) -> Reply:
    if call.body.get("tools") and call.body["messages"][-1]["role"] != "tool":
        return Reply("", tool_calls=[("get_weather", '{"city": "Paris"}')])
    if call.body.get("max_tokens") == 3:
        return Reply("cut short here", finish_reason="length")
    return Reply("hi there friend")


def _down(call: UpstreamCall) -> Reply:
    raise fail(503)


@pytest.fixture
async def gw(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[InProcessGateway]:
    monkeypatch.setenv("ROUTEGATE_MASTER_KEY", MASTER)
    fakes = FakeBackends({"small": _reply, "down": _down})
    async with in_process_gateway(POLICY, tmp_path, fakes) as gateway:
        yield gateway


async def test_create_with_string_input(gw: InProcessGateway) -> None:
    client = gw.openai(MASTER)
    raw = await client.responses.with_raw_response.create(model="cheap", input="Hello?")
    response = raw.parse()
    assert response.object == "response" and response.status == "completed"
    assert response.output_text == "hi there friend"
    request_id = raw.headers["x-routegate-request-id"]
    assert response.id == "resp_" + request_id.removeprefix("rg-")
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (7, 5)
    assert response.usage.total_tokens == 12
    assert gw.fakes["small"].calls[-1].body["messages"] == [{"role": "user", "content": "Hello?"}]
    row = await gw.record(request_id)
    assert (row["api"], row["endpoint_kind"], row["status"]) == ("responses", "chat", 200)
    assert row["cost_usd"] == pytest.approx(7e-6 + 10e-6)


async def test_item_list_with_instructions_translates_to_chat(gw: InProcessGateway) -> None:
    client = gw.openai(MASTER)
    response = await client.responses.create(
        model="cheap",
        instructions="Be brief.",
        input=[
            {"role": "developer", "content": "Answer in English."},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
            {"role": "assistant", "content": [{"type": "output_text", "text": "Hello."}]},
            {
                "role": "user",
                "content": [
                    {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="},
                    {"type": "input_text", "text": "What is this?"},
                ],
            },
        ],
        max_output_tokens=20,
        temperature=0.5,
        top_p=0.9,
        user="u-1",
        metadata={"team": "a"},
        reasoning={"effort": "low"},
    )
    assert response.output_text == "hi there friend"
    # A whole answer repeats the request's settings, as OpenAI's does.
    assert (response.instructions, response.max_output_tokens) == ("Be brief.", 20)
    assert (response.temperature, response.top_p) == (0.5, 0.9)
    sent = gw.fakes["small"].calls[-1].body
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "system", "content": "Answer in English."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                {"type": "text", "text": "What is this?"},
            ],
        },
    ]
    assert (sent["max_tokens"], sent["temperature"], sent["top_p"], sent["user"]) == (
        20, 0.5, 0.9, "u-1",
    )  # fmt: skip
    assert "metadata" not in sent and "reasoning" not in sent


async def test_length_is_an_incomplete_response(gw: InProcessGateway) -> None:
    response = await gw.openai(MASTER).responses.create(
        model="cheap", input="Hi", max_output_tokens=3
    )
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"


async def test_stream_helper_gives_the_events_and_the_final_response(
    gw: InProcessGateway,
) -> None:
    client = gw.openai(MASTER)
    async with client.responses.stream(model="cheap", input="Hello?") as stream:
        events = [event async for event in stream]
        final = await stream.get_final_response()
    kinds = [e.type for e in events]
    deltas = kinds.count("response.output_text.delta")
    assert deltas == 3  # one per word the fake streams
    assert [k for k in kinds if k != "response.output_text.delta"] == [
        k for k in TEXT_EVENTS if k != "response.output_text.delta"
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert final.output_text == "hi there friend" and final.status == "completed"
    assert final.usage is not None and final.usage.output_tokens == 5
    sent = gw.fakes["small"].calls[-1].body
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}


async def test_raw_stream_lines_and_the_request_log(gw: InProcessGateway) -> None:
    body = {"model": "cheap", "input": "Hello?", "stream": True}
    auth = {"authorization": f"Bearer {MASTER}"}
    async with gw.client.stream("POST", "/v1/responses", json=body, headers=auth) as resp:
        assert resp.status_code == 200
        lines = [line async for line in resp.aiter_lines()]
    names = [line[7:] for line in lines if line.startswith("event: ")]
    assert names[:4] == TEXT_EVENTS[:4] and names[-4:] == TEXT_EVENTS[-4:]
    assert any(line.startswith(": x-routegate-cost-usd=") for line in lines)
    row = await gw.record(resp.headers["x-routegate-request-id"])
    assert (row["api"], row["stream"], row["completion_tokens"]) == ("responses", 1, 5)
    assert row["cost_usd"] == pytest.approx(7e-6 + 10e-6)


async def test_iterating_a_created_stream(gw: InProcessGateway) -> None:
    stream = await gw.openai(MASTER).responses.create(model="cheap", input="Hi", stream=True)
    events = [event async for event in stream]
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text == "hi there friend"  # type: ignore[union-attr]


async def test_function_tools_round_trip_streamed_and_not(gw: InProcessGateway) -> None:
    client = gw.openai(MASTER)
    choice = {"type": "function", "name": "get_weather"}
    response = await client.responses.create(
        model="cheap",
        input="Weather in Paris?",
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice=choice,  # type: ignore[arg-type]
        parallel_tool_calls=False,
    )
    call = response.output[0]
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Paris"}
    sent = gw.fakes["small"].calls[-1].body
    assert sent["tools"][0]["function"]["parameters"] == WEATHER["parameters"]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert sent["parallel_tool_calls"] is False

    async with client.responses.stream(
        model="cheap",
        input="Weather in Paris?",
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="required",
    ) as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_response()
    assert "response.function_call_arguments.delta" in kinds
    assert "response.function_call_arguments.done" in kinds
    streamed = final.output[0]
    assert streamed.type == "function_call" and streamed.status == "completed"
    assert json.loads(streamed.arguments) == {"city": "Paris"}
    assert final.tools[0].name == "get_weather"  # type: ignore[union-attr]

    # The result goes back: the function_call and its output become chat's tool_calls and a
    # `tool` message.
    follow_up = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "type": "function_call",
            "call_id": call.call_id,
            "name": call.name,
            "arguments": call.arguments,
        },
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"},
    ]
    answer = await client.responses.create(
        model="cheap",
        input=follow_up,  # type: ignore[arg-type]
        tools=[WEATHER],  # type: ignore[list-item]
    )
    assert answer.output_text == "hi there friend"
    sent_messages = gw.fakes["small"].calls[-1].body["messages"]
    assert sent_messages[1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": call.call_id,
                "type": "function",
                "function": {"name": "get_weather", "arguments": call.arguments},
            }
        ],
    }
    assert sent_messages[2] == {
        "role": "tool",
        "tool_call_id": call.call_id,
        "content": "sunny, 21 C",
    }


async def test_text_format_becomes_response_format(gw: InProcessGateway) -> None:
    client = gw.openai(MASTER)
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    await client.responses.create(
        model="cheap",
        input="JSON please",
        text={"format": {"type": "json_schema", "name": "thing", "schema": schema, "strict": True}},
    )
    assert gw.fakes["small"].calls[-1].body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "thing", "schema": schema, "strict": True},
    }
    await client.responses.create(
        model="cheap", input="JSON please", text={"format": {"type": "json_object"}}
    )
    assert gw.fakes["small"].calls[-1].body["response_format"] == {"type": "json_object"}
    await client.responses.create(model="cheap", input="x", text={"format": {"type": "text"}})
    assert "response_format" not in gw.fakes["small"].calls[-1].body


async def test_conversation_state_is_refused_naming_the_field(gw: InProcessGateway) -> None:
    client = gw.openai(MASTER)
    with pytest.raises(openai.BadRequestError) as previous:
        await client.responses.create(model="cheap", input="Hi", previous_response_id="resp_1")
    assert previous.value.body["param"] == "previous_response_id"  # type: ignore[index]
    assert "no conversation state" in previous.value.body["message"]  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as stored:
        await client.responses.create(model="cheap", input="Hi", store=True)
    assert stored.value.body["param"] == "store"  # type: ignore[index]
    # store: false is what stateless means; it is accepted.
    response = await client.responses.create(model="cheap", input="Hi", store=False)
    assert response.output_text == "hi there friend"
    assert gw.fakes["small"].calls and len(gw.fakes["small"].calls) == 1


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "Hi"}, "model"),
        ({"model": "cheap"}, "input"),
        ({"model": "cheap", "input": 5}, "input"),
        ({"model": "cheap", "input": "Hi", "tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"model": "cheap", "input": "Hi", "max_output_tokens": 0}, "max_output_tokens"),
        ({"model": "cheap", "input": "Hi", "temperature": "hot"}, "temperature"),
        ({"model": "cheap", "input": [{"role": "robot", "content": "x"}]}, "input[0]"),
        ({"model": "cheap", "input": [{"type": "function_call", "name": "f"}]}, "input[0]"),
        ({"model": "cheap", "input": "Hi", "tool_choice": "sometimes"}, "tool_choice"),
        ({"model": "cheap", "input": "Hi", "text": {"format": {"type": "yaml"}}}, "text.format"),
    ],
)
async def test_validation_400_names_the_field(
    gw: InProcessGateway, body: dict[str, object], param: str
) -> None:
    resp = await gw.client.post(
        "/v1/responses", json=body, headers={"authorization": f"Bearer {MASTER}"}
    )
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"].startswith(param), error
    assert gw.fakes["small"].calls == []


async def test_errors_are_openai_shaped(gw: InProcessGateway) -> None:
    with pytest.raises(openai.AuthenticationError):
        await gw.openai("wrong-key").responses.create(model="cheap", input="Hi")
    client = gw.openai(MASTER)
    with pytest.raises(openai.NotFoundError):
        await client.responses.create(model="no-such-route", input="Hi")
    with pytest.raises(openai.APIStatusError) as down:
        await client.responses.create(model="broken", input="Hi")
    assert down.value.status_code == 502
    assert down.value.body["type"] == "api_error"  # type: ignore[index]


async def test_a_cached_answer_replays_as_a_response_and_as_a_stream(
    gw: InProcessGateway,
) -> None:
    client = gw.openai(MASTER)
    first = await client.responses.with_raw_response.create(
        model="cached", input="Cache me", temperature=0
    )
    again = await client.responses.with_raw_response.create(
        model="cached", input="Cache me", temperature=0
    )
    assert again.headers["x-routegate-cache"] == "hit"
    assert again.parse().output_text == first.parse().output_text == "hi there friend"
    async with client.responses.stream(model="cached", input="Cache me", temperature=0) as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert final.output_text == "hi there friend"
    assert len(gw.fakes["small"].calls) == 1
    row = await gw.record(again.headers["x-routegate-request-id"])
    extra = row["extra"] if isinstance(row["extra"], dict) else json.loads(row["extra"])
    assert row["api"] == "responses" and extra["cache"]["hit"] is True
