"""Tracing from a real `routegate serve`: configured by OTEL_* alone, its spans reach a real
OTLP/HTTP receiver (protobuf, decoded with opentelemetry-proto) with their GenAI attributes,
the caller's trace continues, the upstream gets the trace context; spans still batched are
flushed when the gateway stops; with no OTEL_* nothing is traced."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.gateway import GatewayProcess
from tests.support.otlp_receiver import OtlpReceiver
from tests.support.upstream import Upstream, free_port

POLICY = """
version: 1
defaults: {{timeout_s: 5, retries: 0}}
models:
  fast:
    provider: vllm
    endpoints: [{url}]
    pricing: {{input_per_1m: 1.0, output_per_1m: 2.0}}
routes:
  cheap: {{models: [fast]}}
"""

FAST_COST = 7 * 1.0e-6 + 5 * 2.0e-6  # the test upstream reports 7 prompt + 5 completion tokens
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
SERVER, CLIENT = 2, 3  # the protobuf's SpanKind
BODY = {"model": "cheap", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 9}


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    up = Upstream("fast").start()
    yield up
    up.stop()


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    rx = OtlpReceiver(free_port()).start()
    yield rx
    rx.stop()


@pytest.fixture
def no_otel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)


def gateway(tmp_path: Path, upstream: Upstream, env: dict[str, str]) -> GatewayProcess:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(url=upstream.base_url))
    return GatewayProcess(policy, tmp_path, env=env).start()


def otel_env(receiver: OtlpReceiver, **extra: str) -> dict[str, str]:
    return {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_SERVICE_NAME": "routegate-under-test",
        **extra,
    }


@pytest.mark.usefixtures("no_otel_env")
def test_spans_reach_an_otlp_receiver_with_their_attributes(
    tmp_path: Path, upstream: Upstream, receiver: OtlpReceiver
) -> None:
    gw = gateway(tmp_path, upstream, otel_env(receiver, OTEL_BSP_SCHEDULE_DELAY="100"))
    try:
        resp = httpx.post(
            gw.url + "/v1/chat/completions", json=BODY, headers={"traceparent": CALLER}, timeout=10
        )
        assert resp.status_code == 200, resp.text
        with httpx.stream(
            "POST", gw.url + "/v1/chat/completions", json={**BODY, "stream": True}, timeout=10
        ) as streamed:
            assert streamed.status_code == 200
            assert b"[DONE]" in streamed.read()
        servers = receiver.wait_for("POST /v1/chat/completions", count=2)
        calls = receiver.wait_for("chat fast", count=2)
        receiver.wait_for("routegate.route", count=2)
    finally:
        gw.stop()
    traced = next(s for s in servers if s.trace_id == TRACE_ID)
    assert traced.kind == SERVER and traced.parent_span_id == "00f067aa0ba902b7"
    assert traced.resource["service.name"] == "routegate-under-test"
    a = traced.attributes
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.request.model"] == "cheap" and a["gen_ai.response.model"] == "fast"
    assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"]) == (7, 5)
    assert a["gen_ai.request.max_tokens"] == 9
    assert a["routegate.cost_usd"] == pytest.approx(FAST_COST)
    assert a["routegate.route"] == "cheap"
    assert a["routegate.request_id"] == resp.headers["x-routegate-request-id"]
    assert a["http.response.status_code"] == 200

    call = next(s for s in calls if s.trace_id == TRACE_ID)
    assert call.kind == CLIENT and call.parent_span_id == traced.span_id
    assert call.attributes["gen_ai.provider.name"] == "vllm"
    assert call.attributes["server.address"] == "127.0.0.1"
    # The upstream got the client span's context, over the gateway's real HTTP client.
    assert upstream.headers[0]["traceparent"] == f"00-{TRACE_ID}-{call.span_id}-01"

    stream = next(s for s in servers if s.trace_id != TRACE_ID)
    assert stream.attributes["routegate.stream"] is True
    assert stream.attributes["gen_ai.usage.output_tokens"] == 5  # ended with the stream
    assert stream.parent_span_id == ""


@pytest.mark.usefixtures("no_otel_env")
def test_batched_spans_are_flushed_when_the_gateway_stops(
    tmp_path: Path, upstream: Upstream, receiver: OtlpReceiver
) -> None:
    # A batch delay far longer than the test: only the shutdown's flush can export them.
    gw = gateway(tmp_path, upstream, otel_env(receiver, OTEL_BSP_SCHEDULE_DELAY="600000"))
    try:
        for _ in range(3):
            resp = httpx.post(gw.url + "/v1/chat/completions", json=BODY, timeout=10)
            assert resp.status_code == 200, resp.text
        time.sleep(0.3)
        assert receiver.spans == []
    finally:
        gw.stop()
    assert gw.proc is not None and gw.proc.returncode == 0, gw.output()
    assert len(receiver.wait_for("POST /v1/chat/completions", count=3, timeout=2)) == 3


@pytest.mark.usefixtures("no_otel_env")
def test_without_otel_variables_nothing_is_traced(
    tmp_path: Path, upstream: Upstream, receiver: OtlpReceiver
) -> None:
    # A service name alone configures no exporter: tracing stays off.
    gw = gateway(tmp_path, upstream, {"OTEL_SERVICE_NAME": "routegate-under-test"})
    try:
        resp = httpx.post(
            gw.url + "/v1/chat/completions", json=BODY, headers={"traceparent": CALLER}, timeout=10
        )
        assert resp.status_code == 200, resp.text
    finally:
        gw.stop()
    assert receiver.posts == 0 and receiver.spans == []
    assert "traceparent" not in upstream.headers[0]  # the caller's is not passed on either


@pytest.mark.usefixtures("no_otel_env")
def test_a_bad_otel_setting_is_named_before_serving(tmp_path: Path) -> None:
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/xml"}
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "OTEL_TRACES_EXPORTER=otlp: Unsupported OTLP protocol 'http/xml'" in done.stderr
    assert "Traceback" not in done.stderr
