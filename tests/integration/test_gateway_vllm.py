"""The gateway in front of REAL vLLM servers (tiny generated models), driven by the openai SDK:
chat and text completions, streaming and not, logprobs, the litellm path, and failover when a
server is killed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from gateway.demo.vllm_servers import VllmServer, free_port, start_servers, stop_servers
from tests.support.gateway import GatewayProcess

pytestmark = pytest.mark.integration

POLICY = """
version: 1
defaults: {{timeout_s: 60, retries: 1, max_tokens: 16, health_interval_s: 1, cooldown_s: 2}}
models:
  tiny-small:
    provider: vllm
    endpoints: [{small}, {replica}]
    pricing: {{input_per_1m: 0.10, output_per_1m: 0.20}}
    fallbacks: [tiny-large]
  tiny-small-replica:
    provider: vllm
    endpoints: [{replica}]
    served_name: tiny-small
    pricing: {{input_per_1m: 0.10, output_per_1m: 0.20}}
    fallbacks: [tiny-large]
  tiny-large:
    provider: vllm
    endpoints: [{large}]
    pricing: {{gpu_hour_usd: 3.60, input_tokens_per_second: 1000, output_tokens_per_second: 100}}
  tiny-large-remote:
    provider: litellm
    model: openai/tiny-large
    api_base: {large}
    api_key_env: ROUTEGATE_TEST_REMOTE_KEY
    pricing: {{input_per_1m: 2.50, output_per_1m: 10.00}}
routes:
  cheap: {{models: [tiny-small, tiny-large]}}
  best: {{models: [tiny-large, tiny-small]}}
  remote: {{models: [tiny-large-remote, tiny-large]}}
"""

PRICES = {  # USD per token (input, output)
    "tiny-small": (0.10e-6, 0.20e-6),
    "tiny-large": (1e-6, 10e-6),
    "tiny-large-remote": (2.5e-6, 10e-6),
}
MESSAGES = [{"role": "user", "content": "Write one sentence about routers."}]


@pytest.fixture(scope="module")
def replica(
    tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VllmServer]:
    """A second tiny-small server that the failover test kills."""
    log_dir = tmp_path_factory.mktemp("replica-logs")
    servers = start_servers([("tiny-small", tiny_models["tiny-small"], free_port())], log_dir)
    yield servers[0]
    stop_servers(servers)


@pytest.fixture(scope="module")
def gateway(
    vllm_servers: dict[str, str], replica: VllmServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    work = tmp_path_factory.mktemp("gateway")
    policy = work / "policy.yaml"
    policy.write_text(
        POLICY.format(
            small=vllm_servers["tiny-small"],
            large=vllm_servers["tiny-large"],
            replica=replica.base_url,
        )
    )
    gw = GatewayProcess(policy, work, env={"ROUTEGATE_TEST_REMOTE_KEY": "sk-test"}).start()
    yield gw
    gw.stop()


@pytest.fixture
def client(gateway: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)


def expected_cost(model: str, prompt: int, completion: int) -> float:
    inp, out = PRICES[model]
    return prompt * inp + completion * out


def test_ready_with_real_backends(gateway: GatewayProcess) -> None:
    ready = httpx.get(gateway.url + "/readyz").json()
    assert ready["status"] == "ready"
    assert {"tiny-small", "tiny-large"} <= set(ready["healthy_models"])


def test_chat_with_logprobs_is_answered_and_priced(
    client: openai.OpenAI, gateway: GatewayProcess
) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="best", messages=MESSAGES, max_tokens=8, logprobs=True, top_logprobs=3, temperature=0
    )
    resp = raw.parse()
    assert raw.headers["x-routegate-model"] == "tiny-large"
    assert raw.headers["x-routegate-route"] == "best"
    assert resp.model == "tiny-large"
    assert isinstance(resp.choices[0].message.content, str)
    tokens = resp.choices[0].logprobs.content
    assert 1 <= len(tokens) == resp.usage.completion_tokens <= 8
    assert all(t.logprob <= 0 and len(t.top_logprobs) == 3 for t in tokens)
    cost = expected_cost("tiny-large", resp.usage.prompt_tokens, resp.usage.completion_tokens)
    assert float(raw.headers["x-routegate-cost-usd"]) == pytest.approx(cost, rel=1e-6)

    row = gateway.record(raw.headers["x-routegate-request-id"])
    assert (row["model"], row["route"], row["status"]) == ("tiny-large", "best", 200)
    assert row["completion_tokens"] == resp.usage.completion_tokens
    assert row["cost_usd"] == pytest.approx(cost, rel=1e-6)
    assert row["ttft_ms"] is None and row["latency_ms"] > 0


def test_text_completion_with_logprobs(client: openai.OpenAI) -> None:
    resp = client.completions.create(
        model="tiny-large", prompt="The router said", max_tokens=6, logprobs=2, temperature=0
    )
    lp = resp.choices[0].logprobs
    assert len(lp.tokens) == resp.usage.completion_tokens
    assert all(len(top) >= 2 for top in lp.top_logprobs)


def test_default_max_tokens_and_stop_are_respected(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model="cheap", messages=MESSAGES, max_tokens=5)
    assert resp.usage.completion_tokens <= 5


def test_chat_stream_with_usage(client: openai.OpenAI, gateway: GatewayProcess) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="cheap",
        messages=MESSAGES,
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
        logprobs=True,
        top_logprobs=2,
    )
    assert raw.headers["content-type"].startswith("text/event-stream")
    chunks = list(raw.parse())
    content = [c for c in chunks if c.choices]
    assert content and all(c.model == "tiny-small" for c in chunks)
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and 1 <= usage.completion_tokens <= 12
    with_tokens = [c for c in content if c.choices[0].logprobs and c.choices[0].logprobs.content]
    assert sum(len(c.choices[0].logprobs.content) for c in with_tokens) == usage.completion_tokens

    row = gateway.record(raw.headers["x-routegate-request-id"])
    assert row["stream"] == 1 and row["status"] == 200 and row["ttft_ms"] > 0
    assert row["completion_tokens"] == usage.completion_tokens
    assert row["cost_usd"] == pytest.approx(
        expected_cost("tiny-small", usage.prompt_tokens, usage.completion_tokens), rel=1e-6
    )


def test_completion_stream(client: openai.OpenAI) -> None:
    chunks = list(
        client.completions.create(model="tiny-small", prompt="Once", max_tokens=6, stream=True)
    )
    assert chunks and all(c.usage is None for c in chunks)
    assert "".join(c.choices[0].text for c in chunks if c.choices)


def test_litellm_path_to_the_same_server(client: openai.OpenAI, gateway: GatewayProcess) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="remote", messages=MESSAGES, max_tokens=6, temperature=0
    )
    resp = raw.parse()
    assert raw.headers["x-routegate-model"] == "tiny-large-remote"
    assert resp.model == "tiny-large-remote" and resp.usage.completion_tokens >= 1
    cost = expected_cost(
        "tiny-large-remote", resp.usage.prompt_tokens, resp.usage.completion_tokens
    )
    assert float(raw.headers["x-routegate-cost-usd"]) == pytest.approx(cost, rel=1e-6)

    stream = client.chat.completions.create(
        model="tiny-large-remote",
        messages=MESSAGES,
        max_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1
    assert any(c.choices and c.choices[0].delta.content for c in chunks)


def test_killed_server_fails_over(
    client: openai.OpenAI, gateway: GatewayProcess, replica: VllmServer
) -> None:
    """Runs last in this module: it kills the replica for good."""
    replica.stop()
    # Another endpoint of the same model takes over.
    for _ in range(4):
        raw = client.chat.completions.with_raw_response.create(
            model="tiny-small", messages=MESSAGES, max_tokens=4
        )
        assert raw.headers["x-routegate-model"] == "tiny-small"
        assert "x-routegate-fallbacks" not in raw.headers
    # A model whose only server is gone falls back to its declared fallback model.
    raw = client.chat.completions.with_raw_response.create(
        model="tiny-small-replica", messages=MESSAGES, max_tokens=4
    )
    assert raw.headers["x-routegate-model"] == "tiny-large"
    assert raw.headers["x-routegate-fallbacks"] == "tiny-small-replica"
    row = gateway.record(raw.headers["x-routegate-request-id"])
    assert row["fallbacks"] == ["tiny-small-replica"] and row["status"] == 200
    # The health checks notice, and readiness says which models are still up.
    time.sleep(1.5)
    ready = httpx.get(gateway.url + "/readyz").json()
    assert "tiny-small-replica" not in ready["healthy_models"]
    assert "tiny-small" in ready["healthy_models"]
