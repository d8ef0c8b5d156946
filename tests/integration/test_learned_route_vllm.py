"""`model: auto` served through trained routers (the shipped default artifacts) in front of
REAL vLLM servers: the router's predictions decide the model, show in the headers and land in
the request log; a model known only by its description is placed by the graph router."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.support.gateway import GatewayProcess

pytestmark = pytest.mark.integration

ARTIFACTS = Path(__file__).resolve().parents[2] / "routers" / "artifacts"
WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"
STRONG = "gpt-4-1106-preview"

POLICY = """
version: 1
defaults: {{timeout_s: 60, max_tokens: 8}}
models:
  tiny-small:
    provider: vllm
    endpoints: [{small}]
    pricing: {{input_per_1m: 0.20, output_per_1m: 0.20}}
  tiny-large:
    provider: vllm
    endpoints: [{large}]
    pricing: {{input_per_1m: 10.0, output_per_1m: 30.0}}
  tiny-large-described:
    provider: vllm
    endpoints: [{large}]
    served_name: tiny-large
    description: >-
      GPT-4o, a large proprietary frontier model from OpenAI: the strongest and most
      expensive option, with excellent reasoning, science and professional knowledge.
    pricing: {{input_per_1m: 10.0, output_per_1m: 30.0}}
routes:
  auto:
    kind: learned
    router: {complexity}
    models: [tiny-small, tiny-large]
    model_map: {{tiny-small: "{weak}", tiny-large: "{strong}"}}
    lambda: {lam}
  quality-first:
    kind: learned
    router: {complexity}
    models: [tiny-small, tiny-large]
    model_map: {{tiny-small: "{weak}", tiny-large: "{strong}"}}
    lambda: 0
  cost-first:
    kind: learned
    router: {complexity}
    models: [tiny-small, tiny-large]
    model_map: {{tiny-small: "{weak}", tiny-large: "{strong}"}}
    lambda: 1000000
  graph:
    kind: learned
    router: {graph}
    models: [tiny-small, tiny-large-described]
    model_map: {{tiny-small: "{weak}"}}
    lambda: {lam}
"""

EASY = "What is the capital of France?\\nA. Paris\\nB. Rome\\nC. Berlin\\nD. Madrid\\nAnswer:"
HARD = (
    "Let G be a finite group of order 360 with a normal Sylow 5-subgroup. Find the number of "
    "elements of order 5 in G.\\nA. 4\\nB. 24\\nC. 36\\nD. 144\\nAnswer:"
)


@pytest.fixture(scope="module")
def gateway(
    vllm_servers: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    work = tmp_path_factory.mktemp("learned")
    policy = work / "policy.yaml"
    # lambda: where a predicted quality gain of ~0.1 is worth the strong model's extra cost for
    # these prompts (~40 tokens: ~$0.0006 more), so the choice depends on the query.
    policy.write_text(
        POLICY.format(
            small=vllm_servers["tiny-small"],
            large=vllm_servers["tiny-large"],
            complexity=ARTIFACTS / "complexity-default",
            graph=ARTIFACTS / "graph-default",
            weak=WEAK,
            strong=STRONG,
            lam=150,
        )
    )
    gw = GatewayProcess(policy, work).start(timeout=180)
    yield gw
    gw.stop()


@pytest.fixture
def client(gateway: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)


def ask(client: openai.OpenAI, route: str, text: str, stream: bool = False):  # type: ignore[no-untyped-def]
    return client.chat.completions.with_raw_response.create(
        model=route, messages=[{"role": "user", "content": text}], max_tokens=8, stream=stream
    )


def test_auto_is_routed_by_the_trained_router(
    client: openai.OpenAI, gateway: GatewayProcess
) -> None:
    raw = ask(client, "auto", HARD)
    answer = raw.parse()
    assert answer.choices[0].message.content is not None
    model = raw.headers["x-routegate-model"]
    assert model in ("tiny-small", "tiny-large")
    assert answer.model == model
    assert 0 < float(raw.headers["x-routegate-predicted-quality"]) < 1

    row = gateway.record(raw.headers["x-routegate-request-id"])
    predictions = row["extra"]["predictions"]
    assert set(predictions) == {"tiny-small", "tiny-large"}
    assert row["model"] == model and row["route"] == "auto"
    assert all(0 < p["quality"] < 1 for p in predictions.values())
    assert predictions["tiny-large"]["cost_usd"] > predictions["tiny-small"]["cost_usd"]
    # The choice follows the objective: quality - lambda x cost.
    score = {m: p["quality"] - 150 * p["cost_usd"] for m, p in predictions.items()}
    assert model == max(score, key=score.get)


def test_lambda_moves_the_choice(client: openai.OpenAI) -> None:
    # Lambda 0: predicted quality alone (the records' GPT-4 does far better than Mixtral on
    # general-knowledge questions like EASY); a huge lambda: cost alone.
    assert ask(client, "quality-first", EASY).headers["x-routegate-model"] == "tiny-large"
    assert ask(client, "cost-first", HARD).headers["x-routegate-model"] == "tiny-small"


def test_streaming_through_a_learned_route(client: openai.OpenAI) -> None:
    raw = ask(client, "auto", EASY, stream=True)
    assert raw.headers["x-routegate-route"] == "auto"
    chunks = list(raw.parse())
    assert any(c.choices and c.choices[0].delta.content for c in chunks)


def test_a_model_known_only_by_its_description_is_routed(
    client: openai.OpenAI, gateway: GatewayProcess
) -> None:
    raw = ask(client, "graph", EASY)
    row = gateway.record(raw.headers["x-routegate-request-id"])
    predictions = row["extra"]["predictions"]
    assert set(predictions) == {"tiny-small", "tiny-large-described"}
    # Described like GPT-4, it is placed near GPT-4: predicted better than the cheap model.
    assert predictions["tiny-large-described"]["quality"] > predictions["tiny-small"]["quality"]
