"""Embeddings through litellm (`litellm.aembedding`) to an OpenAI-compatible upstream: floats
always asked of litellm, the vectors returned as the client asked (floats or base64), the
usage in OpenAI's shape, priced at the policy's input price."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import numpy as np
import pytest

from gateway.backends.base import UpstreamCall
from gateway.backends.remote import LitellmBackend
from policies.schema import LitellmModel
from tests.support.upstream import Upstream


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    up = Upstream("emb").start()
    up.prompt_tokens = 9
    yield up
    up.stop()


async def test_litellm_embeddings_come_back_as_asked(upstream: Upstream) -> None:
    config = LitellmModel(
        provider="litellm",
        kind="embedding",
        model="openai/emb",
        api_base=upstream.base_url,
        pricing={"input_per_1m": 1.0, "output_per_1m": 0},
    )
    backend = LitellmBackend("emb", config)
    floats = await backend.complete(
        UpstreamCall("embeddings", {"model": "emb", "input": ["a", "b"], "user": "u"}, 30, 0)
    )
    assert [d["embedding"] for d in floats.body["data"]] == [[0.5, 0.25], [0.5, 0.25]]
    assert floats.body["usage"] == {"prompt_tokens": 9, "total_tokens": 9}
    assert floats.body["model"] == "emb"
    assert (floats.usage.prompt_tokens, floats.usage.completion_tokens) == (9, 0)
    assert floats.usage.exact

    b64 = await backend.complete(
        UpstreamCall(
            "embeddings", {"model": "emb", "input": "a", "encoding_format": "base64"}, 30, 0
        )
    )
    sent = b64.body["data"][0]["embedding"]
    assert isinstance(sent, str)
    assert np.frombuffer(base64.b64decode(sent), dtype="<f4").tolist() == [0.5, 0.25]
    # litellm was asked for floats both times; the client's other fields went along.
    assert (
        "encoding_format" not in upstream.bodies[1]
        or upstream.bodies[1]["encoding_format"] == "float"
    )
    assert upstream.bodies[0]["input"] == ["a", "b"] and upstream.bodies[0]["user"] == "u"
