"""Cascade, EAD and cached routes end to end: the real gateway in front of REAL vLLM servers,
streaming and not. Every step a cascade takes is charged, and the request log and the cost
header agree with the policy's prices to the micro-dollar."""

from __future__ import annotations

import math
from collections.abc import Iterator

import httpx
import openai
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.gateway import GatewayProcess

pytestmark = pytest.mark.integration

MASTER = "master-cascade-test"
PRICES = {"tiny-small": (0.20, 0.20), "tiny-large": (10.0, 30.0), "dead": (10.0, 30.0)}

POLICY = """
version: 1
defaults: {{timeout_s: 60, max_tokens: 12}}
models:
  tiny-small:
    provider: vllm
    endpoints: [{small}]
    pricing: {{input_per_1m: 0.20, output_per_1m: 0.20}}
  tiny-large:
    provider: vllm
    endpoints: [{large}]
    pricing: {{input_per_1m: 10.0, output_per_1m: 30.0}}
  dead:          # nothing listens there
    provider: vllm
    endpoints: [http://127.0.0.1:9/v1]
    served_name: tiny-large
    pricing: {{input_per_1m: 10.0, output_per_1m: 30.0}}
routes:
  strong-is-down:
    kind: cascade
    models: [tiny-small, dead]
    confidence: {{method: mean_logprob, threshold: 0}}
  judge-is-down:
    kind: cascade
    models: [tiny-small, tiny-large]
    confidence: {{method: judge, threshold: 0.5, judge_model: dead}}
    stream_hold_tokens: 4
  ead-large-is-down:
    kind: ead
    small: tiny-small
    large: dead
    threshold: {mid}
    window: 2
    chunk: 4
    span: 3
  sure:        # no mean logprob is below -1000: the cheap answer stands
    kind: cascade
    models: [tiny-small, tiny-large]
    confidence: {{method: mean_logprob, threshold: -1000}}
    stream_hold_tokens: 4
  unsure:      # every mean logprob is below 0: always escalates
    kind: cascade
    models: [tiny-small, tiny-large]
    confidence: {{method: mean_logprob, threshold: 0}}
    stream_hold_tokens: 4
  entropy:     # top-5 entropy is above 0 for a random model: escalates
    kind: cascade
    models: [tiny-small, tiny-large]
    confidence: {{method: mean_entropy, threshold: 0, top_k: 5}}
  judged:
    kind: cascade
    models: [tiny-small, tiny-large]
    confidence: {{method: judge, threshold: 0.5, judge_model: tiny-large}}
  ead-all-large:
    kind: ead
    small: tiny-small
    large: tiny-large
    threshold: 0
    chunk: 4
    span: 4
  ead-mixed:
    kind: ead
    small: tiny-small
    large: tiny-large
    threshold: {mid}
    window: 2
    chunk: 4
    span: 3
  ead-never:
    kind: ead
    small: tiny-small
    large: tiny-large
    threshold: 1000000000
    chunk: 4
  cached:
    models: [tiny-small]
    cache: {{eviction: gdsf, ttl_s: 600, scope: key}}
  cached-team:
    models: [tiny-small]
    cache: {{eviction: lec, ttl_s: 600, scope: team}}
  cached-cascade:
    kind: cascade
    models: [tiny-small, tiny-large]
    confidence: {{method: mean_logprob, threshold: 0}}
    cache: {{eviction: lru, ttl_s: 600, scope: global}}
"""

QUESTION = [{"role": "user", "content": "Name three prime numbers and explain why."}]


def price(model: str, prompt: int, completion: int) -> float:
    inp, out = PRICES[model]
    return prompt * inp / 1e6 + completion * out / 1e6


@pytest.fixture(scope="module")
def gateway(
    vllm_servers: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    work = tmp_path_factory.mktemp("cascades")
    policy = work / "policy.yaml"
    policy.write_text(
        POLICY.format(small=vllm_servers["tiny-small"], large=vllm_servers["tiny-large"], mid=1.58)
    )
    gw = GatewayProcess(policy, work, env={"ROUTEGATE_MASTER_KEY": MASTER}).start()
    try:
        yield gw
    finally:
        gw.stop()


def new_key(gw: GatewayProcess, team: str) -> str:
    resp = httpx.post(
        gw.url + "/admin/keys",
        json={"team": team},
        headers={"authorization": f"Bearer {MASTER}"},
    )
    assert resp.status_code == 201, resp.text
    return resp.json()["secret"]


@pytest.fixture(scope="module")
def secret(gateway: GatewayProcess) -> str:
    return new_key(gateway, "research")


def ask(gw: GatewayProcess, secret: str, route: str, **extra: object) -> httpx.Response:
    body = {"model": route, "messages": QUESTION, "temperature": 0, "max_tokens": 12, **extra}
    resp = httpx.post(
        gw.url + "/v1/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {secret}"},
        timeout=120,
    )
    return resp


def stream(
    gw: GatewayProcess, secret: str, route: str, **extra: object
) -> tuple[httpx.Response, list[dict], str]:
    """(response, data chunks, the cost from the final SSE comment)."""
    body = {
        "model": route,
        "messages": QUESTION,
        "temperature": 0,
        "max_tokens": 12,
        "stream": True,
        **extra,
    }
    with httpx.stream(
        "POST",
        gw.url + "/v1/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {secret}"},
        timeout=120,
    ) as resp:
        lines = [line for line in resp.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    cost = next(line for line in lines if line.startswith(": x-routegate-cost-usd="))
    chunks = [orjson.loads(line[6:]) for line in lines if line.startswith("data: {")]
    return resp, chunks, cost.split("=", 1)[1]


def steps_cost(row: dict) -> float:
    return math.fsum(
        price(s["model"], s["prompt_tokens"], s["completion_tokens"]) for s in row["extra"]["steps"]
    )


# -- response-level cascade ---------------------------------------------------------------------
def test_confident_cheap_answer_stands(gateway: GatewayProcess, secret: str) -> None:
    resp = ask(gateway, secret, "sure")
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-routegate-model"] == "tiny-small"
    assert resp.headers["x-routegate-cascade-steps"] == "tiny-small"
    assert resp.json()["choices"][0]["logprobs"] is None  # asked by the gateway, not the client
    row = gateway.record(resp.headers["x-routegate-request-id"])
    (step,) = row["extra"]["steps"]
    assert step["escalate"] is False and step["confidence"] > -1000
    assert row["extra"]["escalations"] == 0
    assert row["cost_usd"] == pytest.approx(steps_cost(row), abs=1e-12)


@pytest.mark.parametrize("route", ["unsure", "entropy"])
def test_low_confidence_escalates_and_the_client_pays_every_step(
    gateway: GatewayProcess, secret: str, route: str
) -> None:
    resp = ask(gateway, secret, route)
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-routegate-model"] == "tiny-large"
    assert resp.headers["x-routegate-cascade-steps"] == "tiny-small,tiny-large"
    assert resp.json()["model"] == "tiny-large"
    row = gateway.record(resp.headers["x-routegate-request-id"])
    small, large = row["extra"]["steps"]
    assert small["model"] == "tiny-small" and small["escalate"] is True
    assert small["completion_tokens"] > 0 and large["completion_tokens"] > 0
    assert row["extra"]["escalations"] == 1
    assert metric(gateway, "routegate_cascade_escalations_total", route=route) >= 1
    cost = float(resp.headers["x-routegate-cost-usd"])
    assert cost == pytest.approx(steps_cost(row), abs=1e-9)
    assert cost > price("tiny-large", large["prompt_tokens"], large["completion_tokens"])
    assert row["prompt_tokens"] == small["prompt_tokens"] + large["prompt_tokens"]


def test_judge_step_is_charged(gateway: GatewayProcess, secret: str) -> None:
    resp = ask(gateway, secret, "judged")
    assert resp.status_code == 200, resp.text
    row = gateway.record(resp.headers["x-routegate-request-id"])
    roles = [(s["model"], s.get("role")) for s in row["extra"]["steps"]]
    assert roles[:2] == [("tiny-small", None), ("tiny-large", "judge")]
    judged = row["extra"]["steps"][0]
    assert 0.0 <= judged["confidence"] <= 1.0
    assert judged["escalate"] == (judged["confidence"] < 0.5)
    assert row["cost_usd"] == pytest.approx(steps_cost(row), abs=1e-12)


@pytest.mark.parametrize(("route", "answering"), [("sure", "tiny-small"), ("unsure", "tiny-large")])
def test_streamed_cascade_holds_then_streams_one_model(
    gateway: GatewayProcess, secret: str, route: str, answering: str
) -> None:
    resp, chunks, cost = stream(gateway, secret, route, stream_options={"include_usage": True})
    assert resp.status_code == 200
    text_chunks = [c for c in chunks if c["choices"]]
    assert {c["model"] for c in text_chunks} == {answering}
    assert all(c["choices"][0].get("logprobs") is None for c in text_chunks)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in text_chunks)
    assert text
    row = gateway.record(resp.headers["x-routegate-request-id"])
    assert row["model"] == answering
    assert [s["model"] for s in row["extra"]["steps"]][-1] == answering
    assert float(cost) == pytest.approx(row["cost_usd"], abs=1e-9)
    assert row["cost_usd"] == pytest.approx(steps_cost(row), abs=1e-12)
    if answering == "tiny-large":  # the dropped cheap answer was paid for
        assert row["extra"]["steps"][0]["completion_tokens"] >= 4


def test_a_failed_escalation_returns_the_cheap_answer(gateway: GatewayProcess, secret: str) -> None:
    resp = ask(gateway, secret, "strong-is-down")
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-routegate-model"] == "tiny-small"
    row = gateway.record(resp.headers["x-routegate-request-id"])
    assert (
        "dead" in row["extra"]["escalation_failed"]
        or "unreachable" in row["extra"]["escalation_failed"]
    )
    small = row["extra"]["steps"][0]
    assert small["model"] == "tiny-small" and small["escalate"] is True
    assert row["cost_usd"] == pytest.approx(steps_cost(row), abs=1e-12) and row["cost_usd"] > 0


@pytest.mark.parametrize("streamed", [False, True])
def test_a_judge_that_fails_leaves_the_answer_unmeasured(
    gateway: GatewayProcess, secret: str, streamed: bool
) -> None:
    if streamed:
        resp, _, _ = stream(gateway, secret, "judge-is-down")
    else:
        resp = ask(gateway, secret, "judge-is-down")
    assert resp.status_code == 200
    assert resp.headers["x-routegate-model"] == "tiny-large"  # unmeasured: escalated
    row = gateway.record(resp.headers["x-routegate-request-id"])
    small = row["extra"]["steps"][0]
    assert small["model"] == "tiny-small" and small["confidence"] is None
    assert "judge_error" in small and small["escalate"] is True
    assert row["cost_usd"] == pytest.approx(steps_cost(row), abs=1e-12)


def test_an_ead_failure_part_way_still_charges_what_was_written(
    gateway: GatewayProcess, secret: str
) -> None:
    resp = ask(gateway, secret, "ead-large-is-down", max_tokens=24)
    assert resp.status_code in (502, 503), resp.text
    assert resp.json()["error"]["message"]
    row = gateway.record(resp.headers["x-routegate-request-id"])
    assert row["status"] == resp.status_code
    small = next(s for s in row["extra"]["steps"] if s["model"] == "tiny-small")
    assert small["completion_tokens"] > 0
    assert row["cost_usd"] == pytest.approx(steps_cost(row), abs=1e-12) and row["cost_usd"] > 0
    assert float(resp.headers["x-routegate-cost-usd"]) == pytest.approx(row["cost_usd"], abs=1e-9)


# -- Entropy Adaptive Decoding ------------------------------------------------------------------
@pytest.mark.parametrize(("route", "share"), [("ead-never", 0.0), ("ead-all-large", 1.0)])
def test_ead_share_follows_the_threshold(
    gateway: GatewayProcess, secret: str, route: str, share: float
) -> None:
    resp = ask(gateway, secret, route, max_tokens=12)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"]
    row = gateway.record(resp.headers["x-routegate-request-id"])
    assert row["extra"]["large_token_share"] == share
    assert row["cost_usd"] == pytest.approx(steps_cost(row), abs=1e-12)
    assert float(resp.headers["x-routegate-cost-usd"]) == pytest.approx(row["cost_usd"], abs=1e-9)


def test_ead_switches_and_streams(gateway: GatewayProcess, secret: str) -> None:
    resp, chunks, cost = stream(
        gateway, secret, "ead-mixed", max_tokens=24, stream_options={"include_usage": True}
    )
    assert resp.status_code == 200
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text
    usage = chunks[-1]["usage"]
    assert set(usage["models"]) <= {"tiny-small", "tiny-large"}
    assert usage["completion_tokens"] == sum(
        m["completion_tokens"] for m in usage["models"].values()
    )
    row = gateway.record(resp.headers["x-routegate-request-id"])
    assert row["extra"]["switches"] >= 1
    assert metric(gateway, "routegate_ead_switches_total", route="ead-mixed") >= 1
    assert 0.0 < row["extra"]["large_token_share"] < 1.0
    assert float(cost) == pytest.approx(row["cost_usd"], abs=1e-9)
    assert row["cost_usd"] == pytest.approx(steps_cost(row), abs=1e-12)


# -- response cache -----------------------------------------------------------------------------
def test_cache_hit_is_free_and_marked(gateway: GatewayProcess, secret: str) -> None:
    first = ask(gateway, secret, "cached", max_tokens=10)
    assert first.status_code == 200 and first.headers["x-routegate-cache"] == "miss"
    paid = float(first.headers["x-routegate-cost-usd"])
    assert paid > 0
    again = ask(gateway, secret, "cached", max_tokens=10)
    assert again.headers["x-routegate-cache"] == "hit"
    assert float(again.headers["x-routegate-cost-usd"]) == 0.0
    assert again.json() == first.json()
    row = gateway.record(again.headers["x-routegate-request-id"])
    assert row["cost_usd"] == 0.0 and row["model"] == "tiny-small"
    assert row["extra"]["cache"]["hit"] is True
    assert row["extra"]["cache"]["saved_usd"] == pytest.approx(paid, abs=1e-9)
    # Sampled requests are never cached by default, and other parameters are other entries.
    sampled = ask(gateway, secret, "cached", max_tokens=10, temperature=0.7)
    assert "x-routegate-cache" not in sampled.headers
    other = ask(gateway, secret, "cached", max_tokens=9)
    assert other.headers["x-routegate-cache"] == "miss"
    assert metric(gateway, "routegate_cache_lookups_total", route="cached", result="hit") >= 1
    saved = metric(gateway, "routegate_cache_saved_usd_total", route="cached")
    assert saved >= paid


def metric(gw: GatewayProcess, name: str, **labels: str) -> float:
    # Guarded: a master key means keys are required, and /metrics then needs the master key.
    text = httpx.get(gw.url + "/metrics", headers={"authorization": f"Bearer {MASTER}"}).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    raise AssertionError(f"no {name} {labels} in /metrics")


def test_cache_is_isolated_per_key_unless_shared(gateway: GatewayProcess) -> None:
    alice, bob = new_key(gateway, "red"), new_key(gateway, "blue")
    carol = new_key(gateway, "red")
    assert ask(gateway, alice, "cached", max_tokens=7).headers["x-routegate-cache"] == "miss"
    assert ask(gateway, bob, "cached", max_tokens=7).headers["x-routegate-cache"] == "miss"
    assert ask(gateway, alice, "cached", max_tokens=7).headers["x-routegate-cache"] == "hit"
    # scope: team shares within a team only
    assert ask(gateway, alice, "cached-team", max_tokens=7).headers["x-routegate-cache"] == "miss"
    assert ask(gateway, carol, "cached-team", max_tokens=7).headers["x-routegate-cache"] == "hit"
    assert ask(gateway, bob, "cached-team", max_tokens=7).headers["x-routegate-cache"] == "miss"


def test_cached_cascade_answer_replays_as_a_stream(gateway: GatewayProcess, secret: str) -> None:
    first = ask(gateway, secret, "cached-cascade", max_tokens=6)
    assert first.headers["x-routegate-cache"] == "miss"
    assert first.headers["x-routegate-cascade-steps"] == "tiny-small,tiny-large"
    resp, chunks, cost = stream(gateway, secret, "cached-cascade", max_tokens=6)
    assert resp.headers["x-routegate-cache"] == "hit"
    assert float(cost) == 0.0
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == first.json()["choices"][0]["message"]["content"]
    # A streamed miss is stored too, and answers the next non-streamed request.
    _, _, paid = stream(gateway, secret, "cached-cascade", max_tokens=5)
    assert float(paid) > 0
    hit = ask(gateway, secret, "cached-cascade", max_tokens=5)
    assert hit.headers["x-routegate-cache"] == "hit"


@pytest.mark.parametrize("route", ["unsure", "ead-mixed", "cached"])
def test_text_completions_through_every_kind(
    gateway: GatewayProcess, secret: str, route: str
) -> None:
    body = {
        "model": route,
        "prompt": "The three primary colours are",
        "max_tokens": 10,
        "temperature": 0,
    }
    headers = {"authorization": f"Bearer {secret}"}
    resp = httpx.post(gateway.url + "/v1/completions", json=body, headers=headers, timeout=120)
    assert resp.status_code == 200, resp.text
    assert resp.json()["object"] == "text_completion" and resp.json()["choices"][0]["text"]
    row = gateway.record(resp.headers["x-routegate-request-id"])
    assert row["endpoint_kind"] == "completions"
    with httpx.stream(
        "POST",
        gateway.url + "/v1/completions",
        json={**body, "stream": True},
        headers=headers,
        timeout=120,
    ) as streamed:
        lines = [line for line in streamed.iter_lines() if line.startswith("data: {")]
    chunks = [orjson.loads(line[6:]) for line in lines]
    assert all(c["object"] == "text_completion" for c in chunks)
    text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
    if route == "cached":  # the same request again: the cached answer, replayed
        assert streamed.headers["x-routegate-cache"] == "hit"
        assert text == resp.json()["choices"][0]["text"]
    else:
        assert text


def test_openai_sdk_reads_cascade_and_ead_answers(gateway: GatewayProcess, secret: str) -> None:
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=secret, max_retries=0)
    for route in ("unsure", "ead-mixed"):
        out = client.chat.completions.create(
            model=route, messages=QUESTION, max_tokens=8, temperature=0
        )
        assert out.choices[0].message.content
        parts = client.chat.completions.create(
            model=route, messages=QUESTION, max_tokens=8, temperature=0, stream=True
        )
        assert "".join(p.choices[0].delta.content or "" for p in parts if p.choices)
