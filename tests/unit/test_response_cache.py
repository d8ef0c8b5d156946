"""ResponseCache: request keys, the temperature rule, scope isolation, storage through the state
store (on redis too: tests/system/test_state_redis.py), and replaying answers as streams (and
back) with real OpenAI response shapes."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from gateway.cache.response_cache import ResponseCache, body_from_chunks, chunks_from_body, scope_id
from gateway.state import MemoryState, State
from policies.schema import CacheConfig

T0 = 1_800_000_000.0
MESSAGES = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "What is the capital of France?"},
]


def chat_request(**extra: Any) -> dict[str, Any]:
    return {"model": "chat", "messages": copy.deepcopy(MESSAGES), "temperature": 0, **extra}


def cache(route: str = "chat", **config: Any) -> ResponseCache:
    return ResponseCache(MemoryState(), route, CacheConfig(**config))


# -- keys ----------------------------------------------------------------------------------------


def test_key_ignores_field_order_transport_fields_and_number_spelling() -> None:
    c = cache()
    base = c.key_for("chat", chat_request(max_tokens=64), "key_1")
    assert base is not None and len(base) == 64
    reordered = {"max_tokens": 64, "temperature": 0.0, "messages": MESSAGES, "model": "other"}
    assert c.key_for("chat", reordered, "key_1") == base
    noisy = chat_request(
        max_tokens=64, stream=True, stream_options={"include_usage": True}, user="u-42"
    )
    assert c.key_for("chat", noisy, "key_1") == base
    assert c.key_for("chat", chat_request(max_tokens=64, top_p=1), "key_1") == base  # default


@pytest.mark.parametrize(
    "change",
    [
        {"max_tokens": 65},
        {"top_p": 0.9},
        {"stop": ["\n"]},
        {"seed": 7},
        {"logprobs": True},
        {"response_format": {"type": "json_object"}},
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
        {"messages": [*MESSAGES[:1], {"role": "user", "content": "What is the capital of Peru?"}]},
        {"messages": [{"role": "user", "content": "What is the capital of France? "}]},
    ],
)
def test_key_changes_with_anything_that_changes_the_answer(change: dict[str, Any]) -> None:
    c = cache()
    base = c.key_for("chat", chat_request(max_tokens=64), "key_1")
    assert c.key_for("chat", {**chat_request(max_tokens=64), **change}, "key_1") != base


def test_key_depends_on_route_kind_and_scope() -> None:
    body = chat_request()
    keys = {
        cache("chat").key_for("chat", body, "key_1"),
        cache("chat").key_for("completions", body, "key_1"),
        cache("other").key_for("chat", body, "key_1"),
        cache("chat").key_for("chat", body, "key_2"),
        cache("chat", scope="team").key_for("chat", body, "key_1"),  # a team named like a key
    }
    assert len(keys) == 5 and None not in keys


def test_sampled_requests_are_not_cached_unless_the_policy_says_so() -> None:
    strict, sampled = cache(), cache(cache_sampled=True)
    no_temperature = {"model": "chat", "messages": MESSAGES}  # OpenAI's default is 1
    assert strict.key_for("chat", no_temperature, "k") is None
    assert strict.key_for("chat", chat_request(temperature=0.7), "k") is None
    assert strict.key_for("completions", {"prompt": "Once", "temperature": 0}, "k") is not None
    assert sampled.key_for("chat", chat_request(temperature=0.7), "k") is not None
    # With cache_sampled, no temperature and temperature 1 are the same request.
    assert sampled.key_for("chat", no_temperature, "k") == sampled.key_for(
        "chat", chat_request(temperature=1), "k"
    )
    for c in (strict, sampled):
        assert c.key_for("chat", chat_request(n=3), "k") is None  # several samples: random
        assert c.key_for("chat", chat_request(temperature="hot"), "k") is None
    assert strict.key_for("chat", chat_request(n=1), "k") == strict.key_for(
        "chat", chat_request(), "k"
    )


def test_scope_id() -> None:
    assert scope_id(CacheConfig(scope="key"), "key_1", "search") == "key_1"
    assert scope_id(CacheConfig(scope="team"), "key_1", "search") == "search"
    assert scope_id(CacheConfig(scope="global"), "key_1", "search") == "*"
    assert scope_id(CacheConfig(scope="key"), None, None) == "anonymous"
    assert scope_id(CacheConfig(scope="team"), None, None) == "anonymous"


# -- storage -------------------------------------------------------------------------------------

ANSWER = {
    "id": "chatcmpl-AbC123",
    "object": "chat.completion",
    "created": 1_763_900_000,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Paris.",
                "refusal": None,
                "annotations": [],
            },
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": 23,
        "completion_tokens": 3,
        "total_tokens": 26,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
    },
    "service_tier": "default",
    "system_fingerprint": "fp_560af6e559",
}


async def test_put_then_get_in_the_same_scope_only(state: State) -> None:
    for scope, shared in (("key", False), ("team", False), ("global", True)):
        c = ResponseCache(state, f"chat-{scope}", CacheConfig(scope=scope))
        alice = c.key_for("chat", chat_request(), scope_id(c.config, "key_alice", "search"))
        bob = c.key_for("chat", chat_request(), scope_id(c.config, "key_bob", "ads"))
        assert alice is not None and bob is not None
        assert await c.get(alice, T0) is None
        assert await c.put(alice, ANSWER, "tiny-large", 0.0042, T0) == []
        hit = await c.get(alice, T0 + 1)
        assert hit is not None
        assert (hit.body, hit.model, hit.cost_usd, hit.created_at) == (
            ANSWER,
            "tiny-large",
            0.0042,
            T0,
        )
        assert (await c.get(bob, T0 + 1) is not None) is shared


async def test_answers_expire_after_the_policy_ttl(state: State) -> None:
    c = ResponseCache(state, "chat", CacheConfig(ttl_s=30))
    key = c.key_for("chat", chat_request(), "k")
    assert key is not None
    await c.put(key, ANSWER, "m", 0.001, T0)
    assert await c.get(key, T0 + 29) is not None
    assert await c.get(key, T0 + 30) is None


# -- stream replay -------------------------------------------------------------------------------

TOOL_ANSWER = {
    "id": "chatcmpl-T00l",
    "object": "chat.completion",
    "created": 1_763_900_001,
    "model": "gpt-4o-2024-08-06",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_Ab1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    },
                    {
                        "id": "call_Cd2",
                        "type": "function",
                        "function": {"name": "get_time", "arguments": '{"tz": "CET"}'},
                    },
                ],
                "refusal": None,
            },
            "logprobs": None,
            "finish_reason": "tool_calls",
        }
    ],
    "usage": {"prompt_tokens": 80, "completion_tokens": 40, "total_tokens": 120},
}

LOGPROB_ANSWER = {
    "id": "chatcmpl-L0g",
    "object": "chat.completion",
    "created": 1_763_900_002,
    "model": "tiny-small",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Yes"},
            "logprobs": {"content": [{"token": "Yes", "logprob": -0.01, "bytes": [89, 101, 115]}]},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
}

TEXT_ANSWER = {
    "id": "cmpl-9xYz",
    "object": "text_completion",
    "created": 1_763_900_003,
    "model": "tiny-small",
    "choices": [
        {
            "text": " upon a time",
            "index": 0,
            "logprobs": None,
            "finish_reason": "length",
            "stop_reason": None,
        }
    ],
    "usage": {"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6},
}


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        ("chat", ANSWER),
        ("chat", TOOL_ANSWER),
        ("chat", LOGPROB_ANSWER),
        ("completions", TEXT_ANSWER),
    ],
)
def test_body_to_chunks_and_back_is_the_same_answer(kind: str, body: dict[str, Any]) -> None:
    original = copy.deepcopy(body)
    chunks = chunks_from_body(kind, body)  # type: ignore[arg-type]
    want_object = "chat.completion.chunk" if kind == "chat" else "text_completion"
    assert {c["object"] for c in chunks} == {want_object}
    assert {c["id"] for c in chunks} == {body["id"]}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == body["usage"]
    finish = [p["finish_reason"] for c in chunks for p in c["choices"] if p["finish_reason"]]
    assert finish == [body["choices"][0]["finish_reason"]]
    rebuilt = body_from_chunks(kind, chunks)  # type: ignore[arg-type]
    expected = {k: v for k, v in body.items() if k != "service_tier"}  # not part of a stream
    assert rebuilt == expected
    assert body == original  # neither direction mutates its input


def test_chat_stream_as_openai_sends_it_becomes_one_answer() -> None:
    """Chunks as OpenAI streams them (role first, pieces of content and of tool arguments,
    `usage: null` until the usage chunk) assemble into the non-streaming body."""
    head = {"id": "chatcmpl-S", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    stream = [
        {
            **head,
            "choices": [
                {
                    "index": 0,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": None,
                    "finish_reason": None,
                }
            ],
            "usage": None,
        },
        {
            **head,
            "choices": [
                {"index": 0, "delta": {"content": "Par"}, "logprobs": None, "finish_reason": None}
            ],
            "usage": None,
        },
        {
            **head,
            "choices": [
                {"index": 0, "delta": {"content": "is."}, "logprobs": None, "finish_reason": None}
            ],
            "usage": None,
        },
        {
            **head,
            "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}],
            "usage": None,
        },
        {
            **head,
            "choices": [],
            "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
        },
    ]
    body = body_from_chunks("chat", stream)
    assert body == {
        "id": "chatcmpl-S",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Paris."},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
    }
    assert body_from_chunks("chat", chunks_from_body("chat", body)) == body

    tool_stream = [
        {
            **head,
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": "call_1",
                                "type": "function",
                                "function": {"name": "get_weather", "arguments": ""},
                            }
                        ],
                    },
                    "finish_reason": None,
                }
            ],
        },
        {
            **head,
            "choices": [
                {
                    "index": 0,
                    "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"city"'}}]},
                    "finish_reason": None,
                }
            ],
        },
        {
            **head,
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "tool_calls": [{"index": 0, "function": {"arguments": ': "Paris"}'}}]
                    },
                    "finish_reason": None,
                }
            ],
        },
        {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    ]
    message = body_from_chunks("chat", tool_stream)["choices"][0]["message"]
    assert message == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    }


def test_completion_stream_as_vllm_sends_it_becomes_one_answer() -> None:
    head = {"id": "cmpl-v", "object": "text_completion", "created": 2, "model": "tiny-small"}
    stream = [
        {
            **head,
            "choices": [
                {
                    "index": 0,
                    "text": " upon",
                    "logprobs": None,
                    "finish_reason": None,
                    "stop_reason": None,
                }
            ],
        },
        {
            **head,
            "choices": [
                {
                    "index": 0,
                    "text": " a time",
                    "logprobs": None,
                    "finish_reason": "length",
                    "stop_reason": None,
                }
            ],
        },
        {
            **head,
            "choices": [],
            "usage": {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5},
        },
    ]
    body = body_from_chunks("completions", stream)
    assert body["choices"] == [
        {
            "index": 0,
            "text": " upon a time",
            "logprobs": None,
            "finish_reason": "length",
            "stop_reason": None,
        }
    ]
    assert body["usage"]["total_tokens"] == 5
    assert body_from_chunks("completions", chunks_from_body("completions", body)) == body


def test_tool_call_fields_repeated_on_every_delta_are_not_concatenated() -> None:
    """litellm (Anthropic) sends `type: "function"` (and `id: None`, `name: None`) with every
    arguments delta; only the arguments stream in pieces."""
    head = {"id": "chatcmpl-L", "object": "chat.completion.chunk", "created": 3, "model": "m"}

    def part(call: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        delta = {"tool_calls": [{"index": 0, "type": "function", **call}]}
        return {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    stream = [
        part({"id": "toolu_1", "function": {"name": "get_weather", "arguments": ""}}),
        part({"function": {"arguments": '{"city"'}}),
        part({"function": {"arguments": ': "Paris"}'}}),
        {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    ]
    choice = body_from_chunks("chat", stream)["choices"][0]
    assert choice["message"]["tool_calls"] == [
        {
            "id": "toolu_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        }
    ]
    assert choice["finish_reason"] == "tool_calls"
