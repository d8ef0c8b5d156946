"""Cached prompt tokens on REAL vLLM (started with --enable-prompt-tokens-details and its
default prefix caching): the same long prompt twice, the second read mostly from the prefix
cache, reported in the answer's usage, priced at the cached input price and logged."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from tests.support.gateway import GatewayProcess

pytestmark = pytest.mark.integration

INPUT, CACHED, OUTPUT = 1.0, 0.1, 2.0  # USD per 1M tokens
POLICY = f"""
version: 1
defaults: {{timeout_s: 60, retries: 0, max_tokens: 4}}
models:
  tiny-small:
    provider: vllm
    endpoints: ["{{small}}"]
    pricing: {{input_per_1m: {INPUT}, output_per_1m: {OUTPUT}, cached_input_per_1m: {CACHED}}}
routes:
  cheap: {{models: [tiny-small]}}
"""
# A few hundred tokens, well past one KV-cache block, well within the 1,024-token context.
DOCUMENT = " ".join(f"Paragraph {i} of the shared document says routers route." for i in range(40))


@pytest.fixture(scope="module")
def gateway(
    vllm_servers: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    work = tmp_path_factory.mktemp("cached-gateway")
    policy = work / "policy.yaml"
    policy.write_text(POLICY.replace("{small}", vllm_servers["tiny-small"]))
    gw = GatewayProcess(policy, work).start()
    yield gw
    gw.stop()


def _ask(client: openai.OpenAI, stream: bool) -> tuple[str, openai.types.CompletionUsage]:
    messages = [{"role": "user", "content": DOCUMENT + " Summarise it."}]
    if not stream:
        raw = client.chat.completions.with_raw_response.create(
            model="cheap", messages=messages, temperature=0
        )
        resp = raw.parse()
        assert resp.usage is not None
        return raw.headers["x-routegate-request-id"], resp.usage
    with client.chat.completions.with_streaming_response.create(
        model="cheap", messages=messages, temperature=0, stream=True,
        stream_options={"include_usage": True},
    ) as raw:  # fmt: skip
        chunks = list(raw.parse())
        request_id = raw.headers["x-routegate-request-id"]
    usage = chunks[-1].usage
    assert usage is not None
    return request_id, usage


@pytest.mark.parametrize("stream", [False, True])
def test_a_repeated_prompt_is_read_from_the_prefix_cache_and_priced_so(
    gateway: GatewayProcess, stream: bool
) -> None:
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
    _ask(client, stream)  # the first time fills the cache (or finds it filled by the other)
    request_id, usage = _ask(client, stream)
    details = usage.prompt_tokens_details
    assert details is not None and details.cached_tokens
    cached = details.cached_tokens
    assert 0 < cached <= usage.prompt_tokens
    row = gateway.record(request_id)
    assert row["cached_tokens"] == cached and row["prompt_tokens"] == usage.prompt_tokens
    cost = (
        (usage.prompt_tokens - cached) * INPUT + cached * CACHED + usage.completion_tokens * OUTPUT
    ) / 1e6
    assert row["cost_usd"] == pytest.approx(cost, rel=1e-6)
    assert row["extra"]["prompt_cache_saved_usd"] == pytest.approx(
        cached * (INPUT - CACHED) / 1e6, rel=1e-6
    )
