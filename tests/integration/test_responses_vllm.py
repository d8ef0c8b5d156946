"""The Responses API (`POST /v1/responses`) end to end on REAL vLLM servers with the official
`openai` SDK: every route of the example policy (fixed with a cache, learned, cascade, EAD)
answers `responses.create`, streamed and not, and a forced function tool call comes back as a
function_call item. One request log row each, api "responses", with a cost."""

from __future__ import annotations

import json
from collections.abc import Iterator

import openai
import pytest

from tests.support.example_policy import example_policy_on_tiny
from tests.support.gateway import GatewayProcess

pytestmark = pytest.mark.integration

MASTER = "master-responses-vllm-test"
ROUTES = ["cheap", "best", "auto", "cascade", "ead"]
QUESTION = "What is the boiling point of water at sea level?"
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        # An enum: the random demo models then give deterministic, valid JSON.
        "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
        "required": ["city"],
        "additionalProperties": False,
    },
}


@pytest.fixture(scope="module")
def gateway(
    vllm_servers: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    text = example_policy_on_tiny(vllm_servers)
    work = tmp_path_factory.mktemp("responses")
    policy = work / "policy.yaml"
    policy.write_text(text)
    gw = GatewayProcess(policy, work, env={"ROUTEGATE_MASTER_KEY": MASTER}).start()
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture(scope="module")
def client(gateway: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=MASTER, max_retries=0, timeout=120)


@pytest.mark.parametrize("route", ROUTES)
def test_create_on_every_route(gateway: GatewayProcess, client: openai.OpenAI, route: str) -> None:
    raw = client.responses.with_raw_response.create(
        model=route, input=QUESTION, max_output_tokens=10, temperature=0
    )
    response = raw.parse()
    assert response.object == "response"
    assert response.status in {"completed", "incomplete"}
    assert response.output_text
    assert response.usage is not None and response.usage.output_tokens > 0
    row = gateway.record(raw.headers["x-routegate-request-id"])
    assert (row["api"], row["status"]) == ("responses", 200)
    assert row["cost_usd"] > 0


@pytest.mark.parametrize("route", ROUTES)
def test_stream_on_every_route(gateway: GatewayProcess, client: openai.OpenAI, route: str) -> None:
    with client.responses.stream(
        model=route, input=QUESTION, max_output_tokens=10, temperature=0
    ) as stream:
        events = list(stream)
    kinds = [event.type for event in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert "response.output_text.delta" in kinds
    # The random-weights demo models rarely stop on their own: a stream cut at
    # max_output_tokens ends, as OpenAI's do, in response.incomplete (where the SDK's
    # get_final_response() raises, as it does against OpenAI), else in response.completed.
    last = events[-1]
    assert last.type in {"response.completed", "response.incomplete"}
    final = last.response  # type: ignore[union-attr]
    assert final.output_text and final.usage is not None and final.usage.output_tokens > 0
    if last.type == "response.completed":
        assert stream.get_final_response().output_text == final.output_text
    else:
        assert final.incomplete_details.reason == "max_output_tokens"
    # The SDK's plain iterator over a created stream too.
    plain = list(
        client.responses.create(model=route, input=QUESTION, max_output_tokens=10, stream=True)
    )
    assert plain[-1].type in {"response.completed", "response.incomplete"}


def test_a_forced_function_call(client: openai.OpenAI) -> None:
    # The demo models have random weights: only a forced call is a call, its arguments the
    # schema's shape (vLLM's structured output for a named tool_choice).
    response = client.responses.create(
        model="cheap",
        input="What is the weather in Paris?",
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=40,
    )
    calls = [item for item in response.output if item.type == "function_call"]
    assert calls and calls[0].name == "get_weather" and calls[0].call_id
    assert isinstance(json.loads(calls[0].arguments), dict)

    with client.responses.stream(
        model="cheap",
        input="What is the weather in Paris?",
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=40,
    ) as stream:
        last = list(stream)[-1]
    assert last.type in {"response.completed", "response.incomplete"}
    streamed = [item for item in last.response.output if item.type == "function_call"]  # type: ignore[union-attr]
    assert streamed and streamed[0].name == "get_weather"

    # The result goes back as a function_call_output, and the model answers.
    follow_up = client.responses.create(
        model="cheap",
        input=[
            {"role": "user", "content": "What is the weather in Paris?"},
            {
                "type": "function_call",
                "call_id": calls[0].call_id,
                "name": "get_weather",
                "arguments": calls[0].arguments,
            },
            {"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny"},
        ],
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="none",
        max_output_tokens=10,
    )
    assert follow_up.status in {"completed", "incomplete"}
