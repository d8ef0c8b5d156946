"""The demo vLLM servers themselves, hit with the openai SDK directly (no gateway in between).

These pin down the upstream behaviour the gateway relies on: real logprobs, usage in the last
stream chunk, `continuous_usage_stats`, and replies that run to max_tokens.
"""

from __future__ import annotations

from typing import Any

import pytest
from openai import OpenAI

pytestmark = pytest.mark.integration

MODELS = ["tiny-small", "tiny-large"]


def client_for(vllm_servers: dict[str, str], name: str) -> OpenAI:
    # max_retries=0: a flaky server should fail the test, not be papered over.
    return OpenAI(base_url=vllm_servers[name], api_key="EMPTY", max_retries=0, timeout=60)


@pytest.mark.parametrize("model", MODELS)
def test_models_endpoint_lists_served_name(vllm_servers: dict[str, str], model: str) -> None:
    ids = [m.id for m in client_for(vllm_servers, model).models.list()]
    assert ids == [model]


@pytest.mark.parametrize("model", MODELS)
def test_chat_completion_with_logprobs(vllm_servers: dict[str, str], model: str) -> None:
    resp = client_for(vllm_servers, model).chat.completions.create(
        model=model,
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Say something."},
        ],
        max_tokens=8,
        logprobs=True,
        top_logprobs=3,
        # Sampled, but repeatable: an unlucky draw of a special token would change the text.
        seed=11,
    )
    assert resp.model == model
    choice = resp.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    # EOS has a zeroed lm_head row, so replies run to max_tokens (sampled EOS is ~1e-4/step).
    assert choice.finish_reason == "length"
    assert resp.usage is not None
    assert resp.usage.completion_tokens == 8
    assert resp.usage.prompt_tokens > 0

    assert choice.logprobs is not None and choice.logprobs.content is not None
    content = choice.logprobs.content
    assert len(content) == resp.usage.completion_tokens
    for item in content:
        assert isinstance(item.logprob, float)
        assert item.logprob <= 0.0
        assert len(item.top_logprobs) == 3
        top = [t.logprob for t in item.top_logprobs]
        assert all(isinstance(lp, float) and lp <= 0.0 for lp in top)
        # vLLM quirk (unlike OpenAI): top_logprobs[0] is always the SAMPLED token, followed by
        # the best others; so with sampling it is [sampled, best, 2nd best], not the top 3.
        assert item.top_logprobs[0].token == item.token
        assert top[0] == item.logprob
        assert top[1:] == sorted(top[1:], reverse=True)
    assert "".join(item.token for item in content) == choice.message.content


def test_greedy_chat_top_logprobs_are_the_true_top(vllm_servers: dict[str, str]) -> None:
    resp = client_for(vllm_servers, "tiny-large").chat.completions.create(
        model="tiny-large",
        messages=[{"role": "user", "content": "Be confident."}],
        max_tokens=6,
        temperature=0.0,
        logprobs=True,
        top_logprobs=3,
    )
    content = resp.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and len(content) == 6
    for item in content:
        # Greedy: the chosen token is the best one, so the list is the real top 3, best first.
        top = [t.logprob for t in item.top_logprobs]
        assert len(top) == 3
        assert top == sorted(top, reverse=True)
        assert item.top_logprobs[0].token == item.token


def test_text_completion_is_greedy_deterministic(vllm_servers: dict[str, str]) -> None:
    client = client_for(vllm_servers, "tiny-small")
    kwargs: dict[str, Any] = {
        "model": "tiny-small",
        "prompt": "def routegate(request):",
        "max_tokens": 16,
        "temperature": 0.0,
    }
    first = client.completions.create(**kwargs)
    second = client.completions.create(**kwargs)
    assert first.object == "text_completion"
    assert first.choices[0].text
    assert first.choices[0].finish_reason == "length"
    assert first.usage is not None and first.usage.completion_tokens == 16
    # Greedy replies repeat exactly: gateway tests can compare a routed reply to a direct one.
    assert second.choices[0].text == first.choices[0].text


def test_the_two_models_differ(vllm_servers: dict[str, str]) -> None:
    texts = {}
    for model in MODELS:
        resp = client_for(vllm_servers, model).completions.create(
            model=model, prompt="Hello", max_tokens=12, temperature=0.0
        )
        texts[model] = resp.choices[0].text
    assert texts["tiny-small"] != texts["tiny-large"]


@pytest.mark.parametrize("model", MODELS)
def test_streaming_chat_ends_with_usage_chunk(vllm_servers: dict[str, str], model: str) -> None:
    stream = client_for(vllm_servers, model).chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Stream please."}],
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert len(chunks) >= 2
    *content_chunks, last = chunks
    # OpenAI shape: usage only on a final chunk with no choices.
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.completion_tokens == 12
    assert last.usage.prompt_tokens > 0
    assert all(c.usage is None for c in content_chunks)
    text = "".join(c.choices[0].delta.content or "" for c in content_chunks if c.choices)
    assert text
    finishes = [c.choices[0].finish_reason for c in content_chunks if c.choices]
    assert finishes[-1] == "length"


def test_streaming_continuous_usage_stats(vllm_servers: dict[str, str]) -> None:
    """vLLM extension the gateway uses to meter streams that get cut off mid-way."""
    # Not in the SDK's StreamOptions type, but it is sent as-is.
    stream_options: Any = {"include_usage": True, "continuous_usage_stats": True}
    stream = client_for(vllm_servers, "tiny-large").chat.completions.create(
        model="tiny-large",
        messages=[{"role": "user", "content": "Count for me."}],
        max_tokens=10,
        stream=True,
        stream_options=stream_options,
    )
    chunks = list(stream)
    assert all(c.usage is not None for c in chunks), "every chunk should carry usage"
    completion_counts = [c.usage.completion_tokens for c in chunks if c.usage is not None]
    assert completion_counts == sorted(completion_counts)  # running totals, never going back
    assert completion_counts[-1] == 10
    assert chunks[-1].choices == []  # the usual final usage chunk is still there
    prompt_counts = {c.usage.prompt_tokens for c in chunks if c.usage is not None}
    assert len(prompt_counts) == 1 and prompt_counts.pop() > 0
