"""Entropy Adaptive Decoding over REAL vLLM servers (the tiny random-weight models): the
threshold moves the large model's share of the answer from none to all, streamed and whole
answers are the same text, and the usage of each model adds up to what is charged.

The tiny models' top-5 entropies lie between about 1.4 and 1.61 nats (ln 5), so the middle
thresholds below sit inside that band."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from openai.types.chat import ChatCompletionChunk

from cascades.base import CascadeFailed
from cascades.ead import EadCascade, plain_chat_prompt
from gateway.backends.http_client import new_upstream_client
from gateway.backends.vllm_pool import VllmPool
from gateway.tokens import prompt_tokens_upper
from policies.pricing import price_table
from policies.schema import EadRoute, Policy
from tests.support.upstream import free_port

pytestmark = pytest.mark.integration

SMALL, LARGE = "tiny-small", "tiny-large"
PROMPTS = [
    "Tell me about cats.",
    "Write a haiku about the sea.",
    "Explain how routers work.",
    "List three prime numbers.",
    "What is entropy?",
]
MIDDLE = 1.575  # switches on every prompt, yet leaves the small model part of the text
MAX_TOKENS = 64


def chat(prompt: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": "ead",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        **extra,
    }


def policy(urls: dict[str, str]) -> Policy:
    return Policy.model_validate(
        {
            "models": {
                SMALL: {
                    "provider": "vllm",
                    "endpoints": [urls[SMALL]],
                    "pricing": {"input_per_1m": 0.2, "output_per_1m": 0.4},
                },
                LARGE: {
                    "provider": "vllm",
                    "endpoints": [urls[LARGE]],
                    "pricing": {"input_per_1m": 10.0, "output_per_1m": 30.0},
                },
            }
        }
    )


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with new_upstream_client() as c:
        yield c


@pytest.fixture
def pools(vllm_servers: dict[str, str], client: httpx.AsyncClient) -> dict[str, VllmPool]:
    pol = policy(vllm_servers)
    return {name: VllmPool(name, pol.models[name], client) for name in (SMALL, LARGE)}  # type: ignore[arg-type]


@pytest.fixture
def prices(vllm_servers: dict[str, str]) -> dict[str, Any]:
    return price_table(policy(vllm_servers))


def cascade(prices: dict[str, Any], threshold: float, **params: Any) -> EadCascade:
    route = EadRoute(kind="ead", small=SMALL, large=LARGE, threshold=threshold, **params)
    return EadCascade("ead", route, prices, timeout_s=60, retries=0)


async def test_chat_is_rendered_with_the_models_template(pools: dict[str, VllmPool]) -> None:
    messages = [{"role": "user", "content": "Hi"}]
    rendered = await pools[SMALL].render_chat(messages, 10, 0)
    assert rendered == "<|bos|><|user|>\nHi<|end|>\n<|assistant|>\n"
    assert plain_chat_prompt(messages) == "User: Hi\n\nAssistant:"


async def test_no_double_bos(
    pools: dict[str, VllmPool], prices: dict[str, Any], client: httpx.AsyncClient
) -> None:
    """One small call: its prompt is exactly the rendered chat's tokens (BOS not added twice)."""
    body = chat("Hi", max_tokens=8)
    result = await cascade(prices, 1e9).complete("chat", body, pools)
    root = pools[SMALL].endpoints[0].base_url.removesuffix("/v1")
    tok = (
        await client.post(
            root + "/tokenize",
            json={"model": SMALL, "messages": body["messages"], "add_generation_prompt": True},
        )
    ).json()
    assert result.body["usage"]["prompt_tokens"] == tok["count"]


async def test_threshold_extremes(pools: dict[str, VllmPool], prices: dict[str, Any]) -> None:
    never = await cascade(prices, 1e9).complete("chat", chat(PROMPTS[0]), pools)
    assert never.detail["large_token_share"] == 0.0
    assert never.detail["switches"] == 0
    assert never.detail["calls"] == {SMALL: MAX_TOKENS // 16, LARGE: 0}
    assert [s.model for s in never.steps] == [SMALL]

    always = await cascade(prices, 0.0).complete("chat", chat(PROMPTS[0]), pools)
    assert always.detail["large_token_share"] == 1.0
    # Handed over at the first token and never back: every rolling mean is >= 0.
    assert always.detail["switches"] == 1
    assert always.detail["tokens"] == {SMALL: 0, LARGE: MAX_TOKENS}
    assert always.detail["calls"] == {SMALL: 1, LARGE: MAX_TOKENS // 16}


async def test_large_share_grows_as_threshold_falls(
    pools: dict[str, VllmPool], prices: dict[str, Any]
) -> None:
    shares: list[float] = []
    for threshold in (1e9, 1.59, MIDDLE, 1.53, 0.0):
        ead = cascade(prices, threshold)
        tokens = {SMALL: 0, LARGE: 0}
        switches = 0
        for prompt in PROMPTS:
            result = await ead.complete("chat", chat(prompt), pools)
            for model, n in result.detail["tokens"].items():
                tokens[model] += n
            switches += result.detail["switches"]
            if threshold == MIDDLE:  # control went to the large model and came back
                assert result.detail["switches"] >= 1
        shares.append(tokens[LARGE] / (tokens[SMALL] + tokens[LARGE]))
        assert sum(tokens.values()) == MAX_TOKENS * len(PROMPTS)
    assert shares[0] == 0.0 and shares[-1] == 1.0
    assert 0.0 < shares[2] < 1.0
    assert shares == sorted(shares), shares


def chunk_text(kind: str, chunk: dict[str, Any]) -> str:
    choice = chunk["choices"][0]
    if kind == "chat":
        return choice["delta"].get("content") or ""
    return choice["text"]


@pytest.mark.parametrize("kind", ["chat", "completions"])
async def test_stream_is_the_same_answer_in_well_formed_chunks(
    kind: str, pools: dict[str, VllmPool], prices: dict[str, Any]
) -> None:
    ead = cascade(prices, MIDDLE)
    if kind == "chat":
        body = chat(PROMPTS[2])
    else:
        body = {"model": "ead", "prompt": "Once upon a time", "max_tokens": MAX_TOKENS}
        body["temperature"] = 0
    whole = await ead.complete(kind, body, pools)  # type: ignore[arg-type]
    stream = await ead.open_stream(kind, body, pools)  # type: ignore[arg-type]
    chunks = [c async for c in stream]

    *content, final, usage_chunk = chunks
    expected_object = "chat.completion.chunk" if kind == "chat" else "text_completion"
    assert len({c["id"] for c in chunks}) == 1
    for c in chunks:
        assert c["object"] == expected_object and c["model"] == "ead"
        assert isinstance(c["created"], int)
        if kind == "chat":
            ChatCompletionChunk.model_validate(c)
    assert usage_chunk["choices"] == [] and usage_chunk["usage"] == whole.body["usage"]
    assert final["choices"][0]["finish_reason"] == "length"
    assert all(c["choices"][0]["finish_reason"] is None for c in content)
    if kind == "chat":
        assert content[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert len(content) > 2  # text arrived call by call, not at the end

    text = "".join(chunk_text(kind, c) for c in content)
    answer = whole.body["choices"][0]
    assert text == (answer["message"]["content"] if kind == "chat" else answer["text"])
    assert whole.body["object"] == ("chat.completion" if kind == "chat" else "text_completion")
    assert whole.model == stream.model == f"{SMALL}+{LARGE}"
    assert stream.detail["switches"] == whole.detail["switches"] >= 1
    assert stream.detail["tokens"] == whole.detail["tokens"]
    assert [(s.model, s.usage) for s in stream.steps] == [(s.model, s.usage) for s in whole.steps]


async def test_usage_per_model_adds_up_and_stays_under_the_bound(
    pools: dict[str, VllmPool], prices: dict[str, Any]
) -> None:
    ead = cascade(prices, MIDDLE)
    for prompt in PROMPTS[:3]:
        body = chat(prompt)
        result = await ead.complete("chat", body, pools)
        usage = result.body["usage"]
        per_model = usage["models"]
        assert usage["prompt_tokens"] == sum(u["prompt_tokens"] for u in per_model.values())
        assert usage["completion_tokens"] == sum(u["completion_tokens"] for u in per_model.values())
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        steps = {s.model: s for s in result.steps}
        assert set(steps) == {SMALL, LARGE}
        for model, step in steps.items():
            assert step.usage.exact
            assert step.usage.prompt_tokens == per_model[model]["prompt_tokens"]
            assert step.usage.completion_tokens == per_model[model]["completion_tokens"]
            # Kept tokens <= generated: a hand-over drops the rest of the small model's call.
            assert result.detail["tokens"][model] <= step.usage.completion_tokens
            assert step.detail["calls"] == result.detail["calls"][model]
        cost = sum(
            prices[s.model](s.usage.prompt_tokens, s.usage.completion_tokens, None)
            for s in result.steps
        )
        assert result.detail["cost_usd"] == pytest.approx(cost)
        bound = ead.worst_case_usd(prompt_tokens_upper(body), MAX_TOKENS, prices)
        assert cost <= bound
        assert len(result.detail["switch_latency_ms"]) == result.detail["switches"]


async def test_stop_sequence_ends_the_answer(
    pools: dict[str, VllmPool], prices: dict[str, Any]
) -> None:
    ead = cascade(prices, MIDDLE)
    free = await ead.complete("chat", chat(PROMPTS[0]), pools)
    text = free.body["choices"][0]["message"]["content"]
    # Stops taken from several places, so some likely straddle two calls' texts.
    for at in (len(text) // 4, len(text) // 2, 3 * len(text) // 4):
        stop = text[at : at + 3]
        if not stop.strip():
            continue
        body = chat(PROMPTS[0], stop=[stop])
        stopped = await ead.complete("chat", body, pools)
        answer = stopped.body["choices"][0]
        assert answer["message"]["content"] == text[: text.find(stop)]
        assert answer["finish_reason"] == "stop"
        stream = await ead.open_stream("chat", body, pools)
        chunks = [c async for c in stream]
        assert "".join(chunk_text("chat", c) for c in chunks[:-1]) == text[: text.find(stop)]
        assert chunks[-2]["choices"][0]["finish_reason"] == "stop"


async def test_stop_split_between_two_calls(
    pools: dict[str, VllmPool], prices: dict[str, Any]
) -> None:
    """A stop sequence whose halves come from two calls, which vLLM sees in neither."""
    ead = cascade(prices, 1e9)  # small model only: calls end every 16 tokens
    for prompt in PROMPTS:
        first_call = await ead.complete("chat", chat(prompt, max_tokens=16), pools)
        edge = len(first_call.body["choices"][0]["message"]["content"])
        whole = await ead.complete("chat", chat(prompt), pools)
        text = whole.body["choices"][0]["message"]["content"]
        # The shortest stop across the edge that does not occur earlier in the (repetitive) text.
        spans = (text[edge - 1 : edge + n] for n in range(1, 12))
        stop = next((s for s in spans if text.find(s) == edge - 1), None)
        if stop is not None:
            break
    assert stop is not None
    body = chat(prompt, stop=stop)
    stopped = await ead.complete("chat", body, pools)
    assert stopped.body["choices"][0]["message"]["content"] == text[: edge - 1]
    assert stopped.body["choices"][0]["finish_reason"] == "stop"
    stream = await ead.open_stream("chat", body, pools)
    chunks = [c async for c in stream]
    # The held-back character never reached the client.
    assert "".join(chunk_text("chat", c) for c in chunks[:-1]) == text[: edge - 1]


async def test_failed_large_model_reports_what_was_spent(
    vllm_servers: dict[str, str], client: httpx.AsyncClient, prices: dict[str, Any]
) -> None:
    urls = dict(vllm_servers, **{LARGE: f"http://127.0.0.1:{free_port()}/v1"})  # nothing there
    pol = policy(urls)
    pools = {name: VllmPool(name, pol.models[name], client) for name in (SMALL, LARGE)}  # type: ignore[arg-type]
    ead = cascade(prices, MIDDLE)
    with pytest.raises(CascadeFailed) as failed:
        await ead.complete("chat", chat(PROMPTS[0]), pools)
    assert failed.value.model == LARGE
    assert failed.value.error.status == 503
    assert [s.model for s in failed.value.steps] == [SMALL]
    assert failed.value.steps[0].usage.completion_tokens > 0

    # Streaming: the small model's first text goes out, then the stream ends in the error.
    mid_stream = 0
    for prompt in PROMPTS:
        try:
            stream = await ead.open_stream("chat", chat(prompt), pools)
        except CascadeFailed:
            continue  # handed over before any text: an ordinary error answer
        got: list[dict[str, Any]] = []
        with pytest.raises(CascadeFailed):
            async for c in stream:
                got.append(c)
        assert chunk_text("chat", got[1])
        assert [s.model for s in stream.steps] == [SMALL]
        mid_stream += 1
    assert mid_stream > 0
