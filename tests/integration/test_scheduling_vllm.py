"""Endpoint scheduling over REAL vLLM (the tiny test servers). There is one server per model,
so a model's two "endpoints" here are one server under two host names (127.0.0.1 and
localhost): the gateway treats them as two endpoints, while the prefix cache is the server's
one. What this shows is where the gateway sends a call (prefix landing, EAD affinity) and that
vLLM reports the repeated prefix as cached; the latency win needs two real replicas (bench/)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from cascades.ead import EadCascade
from gateway.backends.base import UpstreamCall
from gateway.backends.http_client import new_upstream_client
from gateway.backends.vllm_pool import VllmPool
from policies.pricing import price_table
from policies.schema import EadRoute, Policy

pytestmark = pytest.mark.integration

SMALL, LARGE = "tiny-small", "tiny-large"


def twice(url: str) -> list[str]:
    return [url, url.replace("127.0.0.1", "localhost")]


def policy(urls: dict[str, str], scheduling: Any) -> Policy:
    return Policy.model_validate(
        {
            "models": {
                name: {
                    "provider": "vllm",
                    "endpoints": twice(urls[name]),
                    "pricing": {"input_per_1m": 1.0, "output_per_1m": 2.0},
                    "scheduling": scheduling,
                }
                for name in (SMALL, LARGE)
            }
        }
    )


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with new_upstream_client() as c:
        yield c


def document(i: int) -> str:  # a few hundred tokens: several KV blocks, inside 1,024
    return " ".join(f"Paragraph {j} of document {i} says routers route." for j in range(30))


async def test_a_repeated_prefix_lands_where_it_was_served(
    vllm_servers: dict[str, str], client: httpx.AsyncClient
) -> None:
    pol = policy(vllm_servers, "prefix_aware")
    pool = VllmPool(SMALL, pol.models[SMALL], client, health_interval_s=60)  # type: ignore[arg-type]

    def ask(text: str) -> UpstreamCall:
        body = {"messages": [{"role": "user", "content": text}], "max_tokens": 2}
        return UpstreamCall("chat", {**body, "temperature": 0}, 60, 0)

    homes = {i: (await pool.complete(ask(document(i)))).endpoint for i in range(4)}
    for turn in range(2):
        for i, home in homes.items():
            again = await pool.complete(ask(document(i) + f" Turn {turn}: summarise."))
            assert again.endpoint == home
            assert again.usage.cached_tokens > 0  # vLLM read the prefix from its cache


async def test_ead_calls_stay_on_one_endpoint_per_model(
    vllm_servers: dict[str, str], client: httpx.AsyncClient
) -> None:
    pol = policy(vllm_servers, "round_robin")  # would alternate, but for EAD's affinity
    pools = {n: VllmPool(n, pol.models[n], client, health_interval_s=60) for n in (SMALL, LARGE)}  # type: ignore[arg-type]
    route = EadRoute(kind="ead", small=SMALL, large=LARGE, threshold=1.575)
    cascade = EadCascade("ead", route, price_table(pol), timeout_s=60, retries=0)
    # Short prompts (the tiny models switch on these): the text so far stays under a KV block,
    # so vLLM reports no cached tokens here; the long-prefix test above shows those.
    for prompt in ("Tell me about cats.", "What is entropy?", "Explain how routers work."):
        body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": 64}
        result = await cascade.complete("chat", {**body, "temperature": 0}, pools)
        assert result.detail["switches"] > 0
        for step in result.steps:
            assert step.detail["calls"] >= 2
            assert "," not in step.endpoint, (step.model, step.endpoint)
