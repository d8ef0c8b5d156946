"""Upstreams that freeze or drip must not hold requests (issue 11, items 8 and 9).

Through the real `routegate serve` subprocess. A frozen server is reproduced as the audit did:
an upstream in its own process, stopped with SIGSTOP (its socket still accepts connections,
nothing answers). Dripping streams come from the in-thread test upstream.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.support.gateway import GatewayProcess
from tests.support.upstream import Upstream
from tests.support.upstream_process import UpstreamProcess

PRICING = "{input_per_1m: 1.0, output_per_1m: 2.0}"
MESSAGES = [{"role": "user", "content": "hello"}]

# Before the fix there was one timeout, the total (9 s here): a call to a frozen endpoint
# waited all of it. Now a call with no byte for first_byte_timeout_s asks /health
# (health_timeout_s) and moves on: 1.4 s here, well under a third of the old wait.
OLD_TOTAL_S = 9.0
FROZEN_POLICY = """
version: 1
defaults:
  timeout_s: 9
  retries: 1
  health_interval_s: 0.5
  cooldown_s: 30
  connect_timeout_s: 0.5
  first_byte_timeout_s: 0.8
  health_timeout_s: 0.6
  unhealthy_after: 2
  eject_after: 3
models:
  pair:
    provider: vllm
    endpoints: [{frozen}, {good}]
    pricing: {pricing}
  solo:
    provider: vllm
    endpoints: [{frozen}]
    pricing: {pricing}
    fallbacks: [backup]
  backup:
    provider: vllm
    endpoints: [{good}]
    pricing: {pricing}
"""


@pytest.fixture
def frozen_setup(tmp_path: Path) -> Iterator[tuple[GatewayProcess, UpstreamProcess, Upstream]]:
    frozen = UpstreamProcess("frozen").start()
    good = Upstream("good").start()
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        FROZEN_POLICY.format(frozen=frozen.base_url, good=good.base_url, pricing=PRICING)
    )
    gw = GatewayProcess(policy, tmp_path).start()
    try:
        yield gw, frozen, good
    finally:
        gw.stop()
        frozen.stop()
        good.stop()


def _ask(gw: GatewayProcess, model: str, stream: bool = False) -> dict[str, Any]:
    """One request; its status, wall time, headers and (for streams) the text received."""
    body = {"model": model, "messages": MESSAGES, "stream": stream}
    t0 = time.monotonic()
    with httpx.stream("POST", gw.url + "/v1/chat/completions", json=body, timeout=30) as resp:
        raw = resp.read()
    return {
        "status": resp.status_code,
        "wall": time.monotonic() - t0,
        "headers": resp.headers,
        "id": resp.headers["x-routegate-request-id"],
        "raw": raw,
    }


def _failed_endpoints(gw: GatewayProcess, request_id: str) -> list[str]:
    return gw.record(request_id)["extra"].get("failed_endpoints", [])


def _healthy_models(gw: GatewayProcess) -> set[str]:
    return set(httpx.get(gw.url + "/readyz").json()["healthy_models"])


def _wait_until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_a_frozen_endpoint_is_abandoned_fast_then_taken_out(
    frozen_setup: tuple[GatewayProcess, UpstreamProcess, Upstream],
) -> None:
    gw, frozen, _ = frozen_setup
    # Ties between idle endpoints are shuffled: ask until the soon-frozen one has answered
    # (4 sequential requests all missed it once in 16 runs).
    for _ in range(40):
        assert _ask(gw, "pair")["status"] == 200
        if frozen.stats()["arrivals"] >= 1:
            break
    warm = frozen.stats()["arrivals"]
    assert warm >= 1  # both endpoints were in use

    frozen.freeze()
    # Concurrent requests right after the freeze, before any health check noticed it: the
    # pool spreads them by outstanding requests, so about half go to the frozen endpoint.
    kinds = [False, True, False, True, False, True]
    with ThreadPoolExecutor(len(kinds)) as ex:
        first = list(ex.map(lambda s: _ask(gw, "pair", s), kinds))
    assert [r["status"] for r in first] == [200] * len(kinds)
    slowest = max(r["wall"] for r in first)
    assert slowest < OLD_TOTAL_S / 3, f"a request waited {slowest:.1f} s on the frozen server"
    tried_frozen = [r for r in first if _failed_endpoints(gw, r["id"]) == [frozen.base_url]]
    assert tried_frozen, "no request met the frozen endpoint: the test proves nothing"
    for r in first:
        if r["headers"]["content-type"].startswith("text/event-stream"):
            assert b"t4 " in r["raw"] and b'"error"' not in r["raw"]

    # Ejected at once by the failed liveness probe, and unhealthy after two failed probes:
    # from now on the frozen endpoint is not tried at all.
    time.sleep(1.5)
    later = [_ask(gw, "pair", stream=i % 2 == 1) for i in range(10)]
    assert [r["status"] for r in later] == [200] * 10
    assert max(r["wall"] for r in later) < 1.2  # a try on the frozen one costs >= 1.4 s
    assert all(_failed_endpoints(gw, r["id"]) == [] for r in later)

    # Thawed, the frozen server reads what was sent to it while stopped: exactly the requests
    # that were abandoned there, none of the later ones.
    frozen.thaw()
    expected = warm + len(tried_frozen)
    _wait_until(lambda: frozen.stats()["arrivals"] >= expected, 5, "backlog not read")
    time.sleep(0.3)
    assert frozen.stats()["arrivals"] == expected


def test_a_model_whose_only_endpoint_froze_goes_straight_to_its_fallback(
    frozen_setup: tuple[GatewayProcess, UpstreamProcess, Upstream],
) -> None:
    gw, frozen, good = frozen_setup
    assert _ask(gw, "solo")["headers"]["x-routegate-model"] == "solo"
    frozen.freeze()
    first = _ask(gw, "solo")  # meets the frozen server: abandoned at the liveness check
    assert first["status"] == 200 and first["headers"]["x-routegate-model"] == "backup"
    assert first["wall"] < OLD_TOTAL_S / 3
    _wait_until(lambda: "solo" not in _healthy_models(gw), 5, "solo never went unhealthy")
    hits = good.hits
    for stream in (False, True, False, True):
        r = _ask(gw, "solo", stream)
        assert r["status"] == 200 and r["wall"] < 1.2
        assert r["headers"]["x-routegate-model"] == "backup"
        assert r["headers"]["x-routegate-fallbacks"] == "solo"
    assert good.hits == hits + 4


# -- streams that drip ---------------------------------------------------------------------

DRIP_POLICY = """
version: 1
defaults:
  timeout_s: 5
  retries: 0
  health_interval_s: 5
  first_byte_timeout_s: 0.6
  stream_timeout_s: 6
  stream_idle_timeout_s: 0.5
models:
  idle: {{provider: vllm, endpoints: [{idle}], pricing: {pricing}}}
  long:
    provider: vllm
    endpoints: [{long}]
    pricing: {pricing}
    stream_timeout_s: 1.2
    stream_idle_timeout_s: 1.0
  nousage: {{provider: vllm, endpoints: [{nousage}], pricing: {pricing}}}
  slowpoke: {{provider: vllm, endpoints: [{slowpoke}], pricing: {pricing}}}
  unsure: {{provider: vllm, endpoints: [{unsure}], pricing: {pricing}}}
  small: {{provider: vllm, endpoints: [{ead}], pricing: {pricing}}}
  large: {{provider: vllm, endpoints: [{ead}], pricing: {pricing}}}
routes:
  escalate:
    kind: cascade
    models: [unsure, idle]
    confidence: {{method: mean_logprob, threshold: -1.0}}
    stream_hold_tokens: 2
  mixed: {{kind: ead, small: small, large: large, chunk: 4, span: 4}}
"""
NAMES = ("idle", "long", "nousage", "slowpoke", "unsure", "ead")


@pytest.fixture(scope="module")
def drips() -> Iterator[dict[str, Upstream]]:
    ups = {name: Upstream(name).start() for name in NAMES}
    yield ups
    for up in ups.values():
        up.stop()


@pytest.fixture(scope="module")
def drip_gw(
    drips: dict[str, Upstream], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    work = tmp_path_factory.mktemp("drip")
    policy = work / "policy.yaml"
    urls = {name: up.base_url for name, up in drips.items()}
    policy.write_text(DRIP_POLICY.format(pricing=PRICING, **urls))
    gw = GatewayProcess(policy, work).start()
    yield gw
    gw.stop()


def _stream(gw: GatewayProcess, body: dict[str, Any], kind: str = "chat") -> dict[str, Any]:
    """A stream read to its end: the data events, the text, the wall time."""
    path = "/v1/chat/completions" if kind == "chat" else "/v1/completions"
    t0 = time.monotonic()
    events: list[Any] = []
    with httpx.stream("POST", gw.url + path, json={**body, "stream": True}, timeout=30) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line.startswith("data: "):
                data = line[6:]
                events.append(data if data == "[DONE]" else orjson.loads(data))
    text = "".join(
        (c.get("delta") or {}).get("content") or c.get("text") or ""
        for e in events
        if isinstance(e, dict)
        for c in e.get("choices") or []
    )
    return {
        "id": resp.headers["x-routegate-request-id"],
        "events": events,
        "text": text,
        "wall": time.monotonic() - t0,
    }


def _assert_cut(got: dict[str, Any], setting: str) -> dict[str, Any]:
    """The stream ended with an OpenAI error event naming `setting`, then [DONE]."""
    assert got["events"][-1] == "[DONE]"
    err = got["events"][-2]["error"]
    assert err["code"] == "upstream_timeout" and err["type"] == "api_error"
    assert setting in err["message"]
    return err


def _wait_disconnect(up: Upstream, before: int) -> None:
    _wait_until(lambda: up.disconnects > before, 5, "the upstream stream was not closed")


def test_a_stream_that_goes_quiet_is_cut_at_the_idle_timeout(
    drip_gw: GatewayProcess, drips: dict[str, Upstream]
) -> None:
    up = drips["idle"]
    up.mode, up.drip_interval_s, up.drip_chunks = "drip", 2.0, 60
    before = up.disconnects
    got = _stream(drip_gw, {"model": "idle", "messages": MESSAGES})
    _assert_cut(got, "stream_idle_timeout_s")
    assert got["text"] == "t0 "  # the first chunk, then 2 s of nothing: cut at 0.5 s
    assert got["wall"] < 1.8
    _wait_disconnect(up, before)  # closed upstream, so vLLM stops generating
    row = drip_gw.record(got["id"])
    assert row["status"] == 504 and "stream_idle_timeout_s" in row["error"]
    # Charged for what was sent, from the usage the upstream reported on each chunk.
    assert (row["prompt_tokens"], row["completion_tokens"], row["usage_exact"]) == (7, 1, 1)
    assert row["cost_usd"] == pytest.approx(7e-6 + 2e-6)


def test_a_responses_stream_that_goes_quiet_ends_in_response_failed(
    drip_gw: GatewayProcess, drips: dict[str, Upstream]
) -> None:
    """The Responses API's stream (gateway/dialects/responses/) broken mid-way: the openai SDK
    reads a response.failed event naming the setting, and the row is charged what was sent."""
    up = drips["idle"]
    up.mode, up.drip_interval_s, up.drip_chunks = "drip", 2.0, 60
    before = up.disconnects
    client = openai.OpenAI(base_url=drip_gw.url + "/v1", api_key="unused", max_retries=0)
    with client.responses.with_streaming_response.create(
        model="idle", input="hello", stream=True
    ) as raw:
        request_id = raw.headers["x-routegate-request-id"]
        events = list(raw.parse())
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.failed"
    assert "response.output_text.delta" in kinds and "response.completed" not in kinds
    failed = events[-1].response  # type: ignore[union-attr]
    assert failed.status == "failed" and failed.error is not None
    assert failed.error.code == "server_error"
    assert "stream_idle_timeout_s" in failed.error.message
    _wait_disconnect(up, before)
    row = drip_gw.record(request_id)
    assert (row["api"], row["status"]) == ("responses", 504)
    assert (row["completion_tokens"], row["usage_exact"]) == (1, 1)
    assert row["cost_usd"] == pytest.approx(7e-6 + 2e-6)


def test_a_stream_that_drips_is_cut_at_its_deadline(
    drip_gw: GatewayProcess, drips: dict[str, Upstream]
) -> None:
    up = drips["long"]  # the model sets stream_timeout_s: 1.2 (the policy default is 6)
    up.mode, up.drip_interval_s, up.drip_chunks = "drip", 0.2, 100
    before = up.disconnects
    got = _stream(drip_gw, {"model": "long", "messages": MESSAGES})
    _assert_cut(got, "stream_timeout_s")
    sent = got["text"].count(" ")
    assert 3 <= sent <= 8  # about 1.2 s of one chunk per 0.2 s
    assert got["wall"] < 2.5
    _wait_disconnect(up, before)
    row = drip_gw.record(got["id"])
    assert row["status"] == 504 and "deadline of 1.2 s" in row["error"]
    assert (row["completion_tokens"], row["usage_exact"]) == (sent, 1)


def test_a_cut_stream_without_usage_is_charged_an_estimate_flagged_inexact(
    drip_gw: GatewayProcess, drips: dict[str, Upstream]
) -> None:
    up = drips["nousage"]
    up.mode, up.drip_interval_s, up.drip_chunks = "drip", 0.1, 200
    up.continuous_usage = False
    got = _stream(drip_gw, {"model": "nousage", "messages": MESSAGES})
    _assert_cut(got, "stream_timeout_s")  # 0.1 s gaps are under the idle timeout; 6 s in all
    row = drip_gw.record(got["id"])
    assert row["status"] == 504
    # No usage came: the estimate is the bound of what was sent (a token a byte of text, plus
    # special tokens), never less than a token a chunk, and flagged inexact.
    chunks, sent_bytes = got["text"].count(" "), len(got["text"].encode())
    assert 0 < chunks <= row["completion_tokens"] <= sent_bytes + 8
    assert row["usage_exact"] == 0 and row["cost_usd"] > 0


def test_a_live_server_slow_to_its_first_byte_is_waited_on(
    drip_gw: GatewayProcess, drips: dict[str, Upstream]
) -> None:
    """first_byte_timeout_s is a liveness check, not a cut: a server that answers /health is
    generating, and is given up to timeout_s (non-streaming) or its stream limits."""
    up = drips["slowpoke"]
    up.mode, up.delay_s = "slow", 1.5  # well past first_byte_timeout_s (0.6)
    resp = httpx.post(
        drip_gw.url + "/v1/chat/completions",
        json={"model": "slowpoke", "messages": MESSAGES},
        timeout=30,
    )
    assert resp.status_code == 200 and resp.json()["choices"][0]["message"]["content"]
    up.mode = "slow_first"  # a stream's headers at once, its first chunk 1.5 s later
    got = _stream(drip_gw, {"model": "slowpoke", "messages": MESSAGES})
    assert got["text"] == "t0 t1 t2 t3 t4 " and got["events"][-1] == "[DONE]"
    assert drip_gw.record(got["id"])["status"] == 200


def test_a_cascade_stream_is_cut_and_every_step_charged(
    drip_gw: GatewayProcess, drips: dict[str, Upstream]
) -> None:
    # `unsure` answers without logprobs, so the cascade escalates to `idle`, which goes quiet.
    up = drips["idle"]
    up.mode, up.drip_interval_s, up.drip_chunks = "drip", 2.0, 60
    before = up.disconnects
    got = _stream(drip_gw, {"model": "escalate", "messages": MESSAGES})
    _assert_cut(got, "stream_idle_timeout_s")
    assert got["text"] == "t0 " and got["wall"] < 1.8
    _wait_disconnect(up, before)
    row = drip_gw.record(got["id"])
    assert row["status"] == 504 and "stream_idle_timeout_s" in row["error"]
    steps = {s["model"]: s for s in row["extra"]["steps"]}
    assert steps["unsure"]["completion_tokens"] >= 2  # held, scored, dropped: paid for
    assert steps["idle"]["completion_tokens"] == 1
    assert row["cost_usd"] > 0


def test_an_ead_stream_is_cut_and_the_calls_made_are_charged(
    drip_gw: GatewayProcess, drips: dict[str, Upstream]
) -> None:
    # Each completions call takes 1 s and asks for more ("length"): the first one answers
    # before the stream starts, the second one is more than the idle timeout (0.5 s) away.
    up = drips["ead"]
    up.mode, up.delay_s, up.finish_reason = "slow", 1.0, "length"
    got = _stream(drip_gw, {"model": "mixed", "prompt": "Once", "max_tokens": 40}, "completions")
    _assert_cut(got, "stream_idle_timeout_s")
    assert got["text"].startswith("hi from ead")
    row = drip_gw.record(got["id"])
    assert row["status"] == 504 and "stream_idle_timeout_s" in row["error"]
    # The first call, at least: its reported 5 tokens are clamped to its chunk of 4.
    assert row["completion_tokens"] >= 4 and row["cost_usd"] > 0
