"""POST /v1/embeddings with the official openai SDK against `routegate serve` on a REAL vLLM
pooling server (all-MiniLM-L6-v2, the demo's embedding model): floats and base64 (the same
vectors), list and token-array inputs, `dimensions` refused by a model without Matryoshka
support, and the request log row priced at the model's input price."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import numpy as np
import openai
import pytest

from policies.loader import example_policy_path
from tests.support.gateway import GatewayProcess

pytestmark = pytest.mark.integration

MASTER = "master-embed-test"
IN_PER_TOKEN = 0.02e-6  # the example policy's price for minilm


@pytest.fixture(scope="module")
def gateway(
    vllm_embedding_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    # The example policy as shipped, its embedding model pointed at the test server.
    text = (
        example_policy_path().read_text().replace("http://127.0.0.1:8103/v1", vllm_embedding_server)
    )
    example = example_policy_path()
    text = text.replace("router: ../routers/", f"router: {example.parent.parent}/routers/")
    work = tmp_path_factory.mktemp("embed-gw")
    policy = work / "policy.yaml"
    policy.write_text(text)
    gw = GatewayProcess(policy, work, env={"ROUTEGATE_MASTER_KEY": MASTER}).start()
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture
def client(gateway: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=MASTER, max_retries=0, timeout=60)


def test_float_and_base64_give_the_same_vectors(
    gateway: GatewayProcess, client: openai.OpenAI
) -> None:
    floats = client.embeddings.create(
        model="minilm", input="The cat sat on the mat.", encoding_format="float"
    )
    vector = np.array(floats.data[0].embedding)
    assert vector.shape == (384,)
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-3)  # MiniLM is normalised

    raw = client.embeddings.with_raw_response.create(
        model="minilm", input="The cat sat on the mat.", encoding_format="base64"
    )
    sent = raw.http_response.json()["data"][0]["embedding"]
    assert isinstance(sent, str)
    decoded = np.frombuffer(base64.b64decode(sent), dtype="<f4")
    np.testing.assert_allclose(decoded, vector, atol=1e-6)
    # The SDK's default asks for base64 and decodes it: the same vector again.
    default = client.embeddings.create(model="minilm", input="The cat sat on the mat.")
    np.testing.assert_allclose(default.data[0].embedding, vector, atol=1e-6)

    row = gateway.record(raw.headers["x-routegate-request-id"])
    assert row["api"] == "embeddings" and row["model"] == "minilm" and row["status"] == 200
    assert row["prompt_tokens"] > 0 and row["completion_tokens"] == 0
    assert row["prompt_tokens"] == raw.parse().usage.prompt_tokens
    assert row["cost_usd"] == pytest.approx(row["prompt_tokens"] * IN_PER_TOKEN, rel=1e-9)
    assert float(raw.headers["x-routegate-cost-usd"]) == pytest.approx(row["cost_usd"], rel=1e-6)


def test_lists_and_token_arrays(client: openai.OpenAI) -> None:
    texts = ["a dog runs in the park", "a puppy plays outside", "quarterly tax filing"]
    many = client.embeddings.create(model="embed", input=texts, encoding_format="float")
    vectors = np.array([d.embedding for d in sorted(many.data, key=lambda d: d.index)])
    assert vectors.shape == (3, 384)
    similar, unrelated = vectors[0] @ vectors[1], vectors[0] @ vectors[2]
    assert similar > unrelated + 0.2  # real embeddings: the dogs are closer than the taxes

    ids = [101, 1037, 3899, 3216, 102]  # BERT token ids ([CLS] a dog runs [SEP])
    one = client.embeddings.create(model="minilm", input=ids, encoding_format="float")
    two = client.embeddings.create(model="minilm", input=[ids, ids[:3]], encoding_format="float")
    assert len(one.data) == 1 and len(two.data) == 2
    assert one.usage.prompt_tokens == len(ids) and two.usage.prompt_tokens == len(ids) + 3
    np.testing.assert_allclose(one.data[0].embedding, two.data[0].embedding, atol=1e-5)


def test_dimensions_is_refused_by_a_model_without_matryoshka(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.embeddings.create(model="minilm", input="hi", dimensions=64)
    assert "dimensions" in str(refused.value)


def test_the_cache_answers_a_repeat_and_chat_models_are_refused(
    gateway: GatewayProcess, client: openai.OpenAI
) -> None:
    first = client.embeddings.with_raw_response.create(
        model="embed", input="cache me", encoding_format="float"
    )
    again = client.embeddings.with_raw_response.create(
        model="embed", input="cache me", encoding_format="float"
    )
    assert (first.headers["x-routegate-cache"], again.headers["x-routegate-cache"]) == (
        "miss",
        "hit",
    )
    assert again.parse().data[0].embedding == first.parse().data[0].embedding
    assert gateway.record(again.headers["x-routegate-request-id"])["cost_usd"] == 0

    with pytest.raises(openai.BadRequestError) as chat_model:
        client.embeddings.create(model="cheap", input="hi")
    assert chat_model.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as embedding_model:
        client.chat.completions.create(model="minilm", messages=[{"role": "user", "content": "hi"}])
    assert embedding_model.value.body["param"] == "model"
