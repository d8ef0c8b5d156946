"""Feedback teaches a learned route's online layer across replicas: two `routegate serve`
processes share one real Redis; bad scores posted to one (POST /v1/feedback, with the key that
made each request) move the route to the other model on both. Another key's feedback is a 404
and teaches nothing."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.gateway import GatewayProcess
from tests.support.upstream import Upstream

MASTER = "master-test-key"
ARTIFACT = Path(__file__).resolve().parents[2] / "routers/artifacts/complexity-default"
QUESTION = "Which planet in the solar system has the most moons?"

POLICY = """
version: 1
state: {{url: "{redis}", prefix: "{prefix}"}}
models:
  small:
    provider: vllm
    endpoints: [{up}]
    pricing: {{input_per_1m: 0.2, output_per_1m: 0.2}}
  big:
    provider: vllm
    endpoints: [{up}]
    pricing: {{input_per_1m: 0.9, output_per_1m: 0.9}}
routes:
  auto:
    kind: learned
    router: {artifact}
    models: [small, big]
    model_map: {{small: llama-3.1-8b-instruct, big: llama-3.1-nemotron-51b-instruct}}
    lambda: 0
    online: {{explore: 0, refresh_s: 0.05, discount: 0.9, prior_weight: 2}}
"""


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    up = Upstream("u").start()
    yield up
    up.stop()


def start_pair(tmp_path: Path, redis_url: str, up: Upstream) -> list[GatewayProcess]:
    prefix = f"o{time.time_ns()}"
    out = []
    for name in ("a", "b"):
        work = tmp_path / name
        work.mkdir()
        policy = work / "policy.yaml"
        policy.write_text(
            POLICY.format(redis=redis_url, prefix=prefix, up=up.base_url, artifact=ARTIFACT)
        )
        out.append(GatewayProcess(policy, work, env={"ROUTEGATE_MASTER_KEY": MASTER}))
    return [g.start() for g in out]


def ask(gw: GatewayProcess, key: str) -> tuple[str, str]:
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": QUESTION}], max_tokens=8
    )
    return raw.headers["x-routegate-model"], raw.headers["x-routegate-request-id"]


def feedback(gw: GatewayProcess, key: str, request_id: str, score: float) -> httpx.Response:
    return httpx.post(
        gw.url + "/v1/feedback",
        json={"request_id": request_id, "score": score},
        headers={"authorization": f"Bearer {key}"},
    )


def test_feedback_on_one_replica_moves_the_route_on_both(
    tmp_path: Path, redis_url: str, upstream: Upstream
) -> None:
    a, b = start_pair(tmp_path, redis_url, upstream)
    try:
        key, other = a.new_key()[1], a.new_key()[1]
        first, _ = ask(b, key)
        assert ask(a, key)[0] == first  # the same offline choice on both replicas

        _, rid = ask(a, key)
        stranger = feedback(a, other, rid, 0.0)
        assert stranger.status_code == 404, stranger.text

        for _ in range(12):  # every answer of the chosen model is scored bad
            model, rid = ask(a, key)
            if model != first:
                break
            resp = feedback(a, key, rid, 0.0)
            assert resp.status_code == 200, resp.text
            assert resp.json()["learned"] is True
        assert model != first  # replica a moved
        deadline = time.monotonic() + 5
        while ask(b, key)[0] == first:  # replica b reads the shared table within refresh_s
            assert time.monotonic() < deadline, "replica b never learned"
            time.sleep(0.1)
    finally:
        a.stop()
        b.stop()
