"""POST /v1/embeddings through the in-process app on fake backends: the request checks (a 400
naming the field), the model and route kind checks, the worst-case budget reservation and its
settlement, the response cache, base64, and the one request log row. The same on a real vLLM
server: tests/integration/test_embeddings_vllm.py."""

from __future__ import annotations

import base64
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest

from gateway.backends.base import UpstreamCall
from gateway.tokens import prompt_tokens_upper
from tests.support.fake_backend import FakeBackends, Reply, fake_vector
from tests.support.inprocess import InProcessGateway, in_process_gateway

MASTER = "master-test-key"
IN_PER_TOKEN = 0.5e-6
PROMPT_TOKENS = 6  # what the fake embedding upstream reports

POLICY = f"""
version: 1
models:
  embed:
    provider: vllm
    kind: embedding
    endpoints: [http://embed.invalid/v1]
    pricing: {{input_per_1m: {IN_PER_TOKEN * 1e6}, output_per_1m: 0}}
    fallbacks: [embed-backup]
  embed-backup:
    provider: vllm
    kind: embedding
    endpoints: [http://backup.invalid/v1]
    pricing: {{input_per_1m: 1.0, output_per_1m: 0}}
  chatty:
    provider: vllm
    endpoints: [http://chatty.invalid/v1]
    pricing: {{input_per_1m: 1.0, output_per_1m: 2.0}}
    quality: 0.5
routes:
  vectors: {{models: [embed, embed-backup]}}
  cached-vectors:
    models: [embed]
    cache: {{scope: global}}
  talk: {{models: [chatty]}}
  smart: {{kind: cost_aware, models: [chatty]}}
"""


def embedding_reply(call: UpstreamCall) -> Reply:
    return Reply(prompt_tokens=PROMPT_TOKENS)


@pytest.fixture
async def gw(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[InProcessGateway]:
    monkeypatch.setenv("ROUTEGATE_MASTER_KEY", MASTER)
    fakes = FakeBackends({"embed": embedding_reply, "embed-backup": embedding_reply})
    async with in_process_gateway(POLICY, tmp_path, fakes) as gateway:
        yield gateway


async def embed(gw: InProcessGateway, key: str = MASTER, **body: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"}
    return await gw.client.post("/v1/embeddings", json=body, headers=headers)


async def test_the_sdk_gets_floats_and_base64_and_one_row_is_logged(gw: InProcessGateway) -> None:
    client = gw.openai(MASTER)
    floats = await client.embeddings.create(
        model="vectors", input=["hi", "there"], encoding_format="float"
    )
    assert [d.embedding for d in floats.data] == [fake_vector("hi"), fake_vector("there")]
    assert floats.usage.prompt_tokens == PROMPT_TOKENS and floats.model == "embed"

    raw = await client.embeddings.with_raw_response.create(
        model="vectors", input="hi", encoding_format="base64"
    )
    sent = raw.http_response.json()["data"][0]["embedding"]
    assert isinstance(sent, str)  # what the client asked for, as sent
    decoded = np.frombuffer(base64.b64decode(sent), dtype="<f4")
    assert decoded.tolist() == fake_vector("hi")
    # The SDK's default (no encoding_format) asks for base64 and decodes it itself.
    default = await client.embeddings.create(model="vectors", input=[5, 6, 7])
    assert default.data[0].embedding == fake_vector([5, 6, 7])

    row = await gw.record(raw.headers["x-routegate-request-id"])
    assert row["api"] == "embeddings" and row["route"] == "vectors" and row["model"] == "embed"
    assert (row["prompt_tokens"], row["completion_tokens"]) == (PROMPT_TOKENS, 0)
    assert row["cost_usd"] == pytest.approx(PROMPT_TOKENS * IN_PER_TOKEN, abs=1e-15)
    assert float(raw.headers["x-routegate-cost-usd"]) == pytest.approx(row["cost_usd"])
    assert raw.headers["x-routegate-model"] == "embed"
    # The upstream got the client's fields, nothing added (no max_tokens for embeddings).
    assert gw.fakes["embed"].calls[1].kind == "embeddings"
    assert gw.fakes["embed"].calls[1].body == {
        "model": "vectors",
        "input": "hi",
        "encoding_format": "base64",
    }


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "vectors"}, "input"),
        ({"model": "vectors", "input": ""}, "input"),
        ({"model": "vectors", "input": []}, "input"),
        ({"model": "vectors", "input": [1.5]}, "input[0]"),
        ({"model": "vectors", "input": ["ok", 3]}, "input[1]"),
        ({"model": "vectors", "input": [[1, 2], []]}, "input[1]"),
        ({"model": "vectors", "input": [-1]}, "input[0]"),
        ({"model": "vectors", "input": ["x"] * 2049}, "input"),
        ({"model": "vectors", "input": "x", "encoding_format": "hex"}, "encoding_format"),
        ({"model": "vectors", "input": "x", "dimensions": "8"}, "dimensions"),
        ({"model": "vectors", "input": "x", "dimensions": 0}, "dimensions"),
        ({"model": "vectors", "input": "x", "user": 7}, "user"),
        ({"model": "vectors", "input": "x", "stream": True}, "stream"),
        ({"model": "", "input": "x"}, "model"),
    ],
)
async def test_a_bad_field_is_a_400_naming_it(
    gw: InProcessGateway, body: dict[str, Any], param: str
) -> None:
    resp = await embed(gw, **body)
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert err["param"] == param and f"'{param}'" in err["message"]
    assert gw.fakes["embed"].calls == []
    row = await gw.record(resp.headers["x-routegate-request-id"])
    assert row["status"] == 400 and row["api"] == "embeddings"


@pytest.mark.parametrize(
    ("model", "says"),
    [
        ("chatty", "'chatty' is a chat model"),
        ("talk", "route 'talk' serves chat models"),
        ("smart", "route 'smart' serves chat models"),
    ],
)
async def test_embeddings_of_a_chat_model_or_route_are_a_400(
    gw: InProcessGateway, model: str, says: str
) -> None:
    resp = await embed(gw, model=model, input="hi")
    assert resp.status_code == 400
    err = resp.json()["error"]
    assert err["param"] == "model" and says in err["message"]
    assert gw.fakes["chatty"].calls == []


@pytest.mark.parametrize("model", ["embed", "vectors"])
async def test_chat_or_completions_naming_an_embedding_model_are_a_400(
    gw: InProcessGateway, model: str
) -> None:
    chat = await gw.chat(model, key=MASTER)
    assert chat.status_code == 400
    assert chat.json()["error"]["param"] == "model"
    assert "POST /v1/embeddings only" in chat.json()["error"]["message"]
    text = await gw.client.post(
        "/v1/completions",
        json={"model": model, "prompt": "hi"},
        headers={"authorization": f"Bearer {MASTER}"},
    )
    assert text.status_code == 400 and text.json()["error"]["param"] == "model"
    assert gw.fakes["embed"].calls == []


async def test_a_failing_model_falls_back_to_the_next(gw: InProcessGateway) -> None:
    def down(call: UpstreamCall) -> Reply:
        from tests.support.fake_backend import fail

        raise fail(503)

    gw.fakes["embed"].handler = down
    resp = await embed(gw, model="vectors", input="hi")
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-routegate-model"] == "embed-backup"
    assert resp.headers["x-routegate-fallbacks"] == "embed"


async def test_a_budget_reserves_the_input_at_its_price_and_refuses_past_it(
    gw: InProcessGateway,
) -> None:
    body = {"model": "vectors", "input": "hello there"}
    # The worst case is the input's bound at the input price, no answer tokens. Near the end of
    # the budget the chain loses embed-backup (dearer), and embed's worst case decides.
    worst = prompt_tokens_upper(body) * IN_PER_TOKEN
    assert worst == (len("hello there") + 4) * IN_PER_TOKEN
    cost = PROMPT_TOKENS * IN_PER_TOKEN
    budget = 3 * cost + worst  # three answers, and room for one more worst case only
    created = await gw.client.post(
        "/admin/keys",
        json={"team": "rag", "budget_usd": budget},
        headers={"authorization": f"Bearer {MASTER}"},
    )
    key_id, secret = created.json()["id"], created.json()["secret"]
    statuses = [(await embed(gw, secret, **body)).status_code for _ in range(6)]
    fits = math.floor((budget - worst) / cost + 1e-9) + 1
    assert statuses == [200] * fits + [429] * (6 - fits)
    refused = await embed(gw, secret, **body)
    err = refused.json()["error"]
    assert err["code"] == "budget_exceeded" and f"API key {key_id}" in err["message"]
    key = (
        await gw.client.get(f"/admin/keys/{key_id}", headers={"authorization": f"Bearer {MASTER}"})
    ).json()
    assert key["spent_usd"] == pytest.approx(fits * cost) and key["reserved_usd"] == 0
    assert len(gw.fakes["embed"].calls) == fits
    row = await gw.record(refused.headers["x-routegate-request-id"])
    assert (row["status"], row["cost_usd"], row["api"]) == (429, 0, "embeddings")


async def test_a_repeated_input_is_answered_from_the_cache(gw: InProcessGateway) -> None:
    first = await embed(gw, model="cached-vectors", input=["a", "b"])
    again = await embed(gw, model="cached-vectors", input=["a", "b"], user="someone-else")
    other_format = await embed(
        gw, model="cached-vectors", input=["a", "b"], encoding_format="base64"
    )
    other_input = await embed(gw, model="cached-vectors", input=["a", "c"])
    assert [r.headers["x-routegate-cache"] for r in (first, again, other_format, other_input)] == [
        "miss",
        "hit",
        "miss",
        "miss",
    ]
    assert again.json()["data"] == first.json()["data"]
    assert isinstance(other_format.json()["data"][0]["embedding"], str)
    assert float(again.headers["x-routegate-cost-usd"]) == 0
    assert len(gw.fakes["embed"].calls) == 3
    row = await gw.record(again.headers["x-routegate-request-id"])
    assert row["api"] == "embeddings" and row["cost_usd"] == 0
    assert row["extra"]["cache"]["hit"] is True


async def test_an_unauthenticated_request_is_refused(gw: InProcessGateway) -> None:
    resp = await gw.client.post("/v1/embeddings", json={"model": "vectors", "input": "hi"})
    assert resp.status_code == 401
    with pytest.raises(openai.AuthenticationError):
        await gw.openai("wrong").embeddings.create(model="vectors", input="hi")
