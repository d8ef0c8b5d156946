"""A hard budget holds across two gateway processes sharing one real Redis: 200 concurrent
requests against a budget for about 50 (chat completions, and embeddings), and a reservation
left by a killed process expires."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.accounting.request_log import read_records
from tests.support.gateway import GatewayProcess
from tests.support.upstream import Upstream

MASTER = "master-test-key"
COST = 7 * 1e-6 + 5 * 2e-6  # the test upstream answers 7 prompt + 5 completion tokens
# The gateway's worst-case bound on the prompt of BODY (one token per byte plus the chat
# template's overhead). An upstream that reports exactly that makes every answer cost exactly
# its reservation, so the budget, not timing, decides how many fit.
WORST_PROMPT_TOKENS = 41
WORST = WORST_PROMPT_TOKENS * 1e-6 + 5 * 2e-6
BODY = {"model": "cheap", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 5}
# The same request through the Responses API (translated to the same chat body), streamed.
RESPONSES_BODY = {"model": "cheap", "input": "hello", "max_output_tokens": 5, "stream": True}
# Embeddings: the worst case is the input's bound (one token per byte, plus 4) at the input
# price, nothing generated; the upstream reports exactly that bound too.
EMBED_BODY = {"model": "vectors", "input": "hello"}
EMBED_WORST_PROMPT_TOKENS = len("hello") + 4
EMBED_WORST = EMBED_WORST_PROMPT_TOKENS * 1e-6
# Each API's request: path, body, the prompt tokens the upstream reports (the request's
# worst-case bound) and so the cost of one answer; and how its budget refusal reads.
APIS = {
    "chat": ("/v1/chat/completions", BODY, WORST_PROMPT_TOKENS, WORST),
    "messages-stream": ("/v1/messages", {**BODY, "stream": True}, WORST_PROMPT_TOKENS, WORST),
    "embeddings": ("/v1/embeddings", EMBED_BODY, EMBED_WORST_PROMPT_TOKENS, EMBED_WORST),
    "responses-stream": ("/v1/responses", RESPONSES_BODY, WORST_PROMPT_TOKENS, WORST),
}


def refused_for_budget(api: str, resp: httpx.Response) -> bool:
    error = resp.json()["error"]
    if api.startswith("messages"):  # Anthropic's shape: a type, no code
        return error["type"] == "rate_limit_error" and "budget" in error["message"]
    return error["code"] == "budget_exceeded"


POLICY = """
version: 1
state: {{url: "{redis}", prefix: "{prefix}"}}
defaults: {{reservation_ttl_s: {ttl}, timeout_s: 30}}
models:
  fast:
    provider: vllm
    endpoints: [{up}]
    pricing: {{input_per_1m: 1.0, output_per_1m: 2.0}}
  embed:
    provider: vllm
    kind: embedding
    endpoints: [{up}]
    pricing: {{input_per_1m: 1.0, output_per_1m: 0}}
routes:
  cheap: {{models: [fast]}}
  vectors: {{models: [embed]}}
"""


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    up = Upstream("u").start()
    yield up
    up.stop()


def start_pair(tmp_path: Path, redis_url: str, up: Upstream, ttl: float) -> list[GatewayProcess]:
    prefix = f"c{time.time_ns()}"
    gateways = []
    for name in ("a", "b"):
        work = tmp_path / name
        work.mkdir()
        policy = work / "policy.yaml"
        policy.write_text(POLICY.format(redis=redis_url, prefix=prefix, up=up.base_url, ttl=ttl))
        gateways.append(GatewayProcess(policy, work, env={"ROUTEGATE_MASTER_KEY": MASTER}))
    return [g.start() for g in gateways]


@pytest.mark.parametrize("api", APIS)
def test_two_replicas_never_overrun_one_budget(
    tmp_path: Path, redis_url: str, upstream: Upstream, api: str
) -> None:
    path, body, prompt_tokens, worst = APIS[api]
    upstream.mode, upstream.delay_s = "slow", 0.02  # keep many requests in flight at once
    upstream.prompt_tokens = prompt_tokens
    a, b = start_pair(tmp_path, redis_url, upstream, ttl=60)
    try:
        budget = 50.5 * worst
        key = a.admin_json(
            "POST", "/admin/keys", {"team": "t", "budget_usd": budget, "period": "day"}
        )
        headers = {"authorization": f"Bearer {key['secret']}"}

        async def fire() -> list[httpx.Response]:
            limits = httpx.Limits(max_connections=200)
            async with httpx.AsyncClient(timeout=60, limits=limits) as c:
                return await asyncio.gather(*(
                    c.post((a if i % 2 else b).url + path, json=body, headers=headers)
                    for i in range(200)
                ))  # fmt: skip

        responses = asyncio.run(fire())
        statuses = [r.status_code for r in responses]
        answered = statuses.count(200)
        refused = statuses.count(429)
        unexpected = [
            (r.status_code, r.text[:300]) for r in responses if r.status_code not in (200, 429)
        ]
        assert answered + refused == 200, f"unexpected answers: {unexpected}"
        assert all(refused_for_budget(api, r) for r in responses if r.status_code == 429)
        if body.get("stream"):  # every answer is a whole stream, ended as its API ends one
            ends = {"messages": b"message_stop", "responses": b"event: response.completed"}
            end = ends.get(api.split("-")[0], b"[DONE]")
            assert all(end in r.content for r in responses if r.status_code == 200)
        # Each answer costs its reservation, so exactly 50 fit: one more would overrun the
        # budget, one fewer would mean a reservation was lost or counted twice.
        assert answered == 50

        spent = b.admin_json("GET", f"/admin/keys/{key['id']}")
        assert spent["spent_usd"] == pytest.approx(answered * worst, abs=1e-9)
        assert spent["spent_usd"] <= budget
        assert spent["reserved_usd"] == 0

        # Every request is in one of the two request logs exactly once, and only answers cost.
        a.stop()
        b.stop()
        rows = read_records(a.log_path) + read_records(b.log_path)
        assert len(rows) == 200 == len({r["request_id"] for r in rows})
        assert sorted(r["request_id"] for r in rows) == sorted(
            r.headers["x-routegate-request-id"] for r in responses
        )
        assert sum(r["cost_usd"] for r in rows) == pytest.approx(answered * worst, abs=1e-9)
        assert all(r["cost_usd"] == 0 for r in rows if r["status"] == 429)
        assert {r["api"] for r in rows} == {api.split("-")[0]}
        assert upstream.hits == answered  # refused requests never reached the model
    finally:
        a.stop()
        b.stop()


def test_reservation_of_a_killed_replica_expires(
    tmp_path: Path, redis_url: str, upstream: Upstream
) -> None:
    upstream.mode, upstream.delay_s = "slow", 30
    a, b = start_pair(tmp_path, redis_url, upstream, ttl=2)
    # The worst case of one request (300k completion tokens at $2/1M = $0.60) fits the budget
    # once, so while a reservation is held a second request is refused.
    body = {**BODY, "max_tokens": 300_000}
    try:
        key = a.admin_json("POST", "/admin/keys", {"team": "t", "budget_usd": 1.0})
        headers = {"authorization": f"Bearer {key['secret']}"}

        def doomed_request() -> None:
            with contextlib.suppress(httpx.HTTPError):  # its gateway is killed mid-request
                httpx.post(a.url + "/v1/chat/completions", json=body, headers=headers, timeout=60)

        threading.Thread(target=doomed_request, daemon=True).start()
        deadline = time.time() + 5
        while b.admin_json("GET", f"/admin/keys/{key['id']}")["reserved_usd"] == 0:
            assert time.time() < deadline, "the request never reserved"
            time.sleep(0.05)
        a.signal(signal.SIGKILL)  # dies holding the reservation
        upstream.mode = "ok"
        held = httpx.post(b.url + "/v1/chat/completions", json=body, headers=headers)
        assert held.status_code == 429, held.text
        assert "held by requests in flight" in held.json()["error"]["message"]

        time.sleep(2.5)  # past the reservation TTL
        usage = b.admin_json("GET", f"/admin/keys/{key['id']}")
        assert usage["reserved_usd"] == 0 and usage["spent_usd"] == 0
        freed = httpx.post(b.url + "/v1/chat/completions", json=body, headers=headers)
        assert freed.status_code == 200, freed.text
        assert b.admin_json("GET", f"/admin/keys/{key['id']}")["spent_usd"] == pytest.approx(
            COST, abs=1e-9
        )
    finally:
        a.stop()
        b.stop()
