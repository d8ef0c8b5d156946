"""OpenTelemetry spans of requests through the in-process app, into the SDK's own in-memory
exporter: the span tree, GenAI attributes, cost, the caller's traceparent continued and the
gateway's sent upstream, streams ended with their usage, errors. (Over OTLP/HTTP from a real
`routegate serve`: tests/system/test_tracing_otlp.py.)"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from gateway.backends.base import UpstreamCall
from gateway.tracing import Tracing, exporter_names, from_env
from tests.support.fake_backend import FakeBackends, Reply, fail
from tests.support.inprocess import in_process_gateway

POLICY = """
version: 1
defaults: {max_tokens: 16, retries: 0}
models:
  cheap:
    provider: vllm
    endpoints: [http://cheap.invalid/v1]
    pricing: {input_per_1m: 1.0, output_per_1m: 2.0}
    quality: 0.5
  strong:
    provider: vllm
    endpoints: [http://strong.invalid/v1]
    pricing: {input_per_1m: 10.0, output_per_1m: 20.0}
    quality: 0.9
  down:
    provider: vllm
    endpoints: [http://down.invalid/v1]
    pricing: {input_per_1m: 1.0, output_per_1m: 1.0}
  vec:
    provider: vllm
    kind: embedding
    endpoints: [http://vec.invalid/v1]
    pricing: {input_per_1m: 1.0, output_per_1m: 0}
routes:
  smart:
    kind: cost_aware
    models: [cheap, strong]
    lambda: 800
  chain:
    kind: fixed
    models: [down, cheap]
  broken:
    kind: fixed
    models: [down]
  cascade:
    kind: cascade
    models: [cheap, strong]
    confidence: {method: mean_logprob, threshold: -1.0}
    stream_hold_tokens: 2
  vectors:
    models: [vec]
    cache: {scope: global}
"""

CHEAP_COST = 7 * 1e-6 + 5 * 2e-6
STRONG_COST = 7 * 10e-6 + 5 * 20e-6
UNSURE = Reply("maybe it is five", logprobs=[-2.5, -3.0, -1.8, -2.2])
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


def fakes() -> FakeBackends:
    return FakeBackends({"down": lambda call: (_ for _ in ()).throw(fail(503)), "cheap": _cheap})


def _cheap(call: UpstreamCall) -> Reply:
    return UNSURE if call.body.get("logprobs") else Reply("cheap answer")


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    out = InMemorySpanExporter()
    yield out
    out.clear()


@pytest.fixture
def tracing(exporter: InMemorySpanExporter) -> Iterator[Tracing]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield Tracing.of(provider)
    provider.shutdown()


def by_name(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def one(spans: tuple[ReadableSpan, ...], name: str) -> ReadableSpan:
    (span,) = by_name(spans, name)
    return span


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


async def test_a_routed_request_is_one_trace_with_its_phases_and_call(
    tmp_path: Path, exporter: InMemorySpanExporter, tracing: Tracing
) -> None:
    async with in_process_gateway(POLICY, tmp_path, fakes(), tracing=tracing) as gw:
        resp = await gw.chat("smart", temperature=0.5, max_tokens=12)
        assert resp.status_code == 200, resp.text
    spans = exporter.get_finished_spans()
    server = one(spans, "POST /v1/chat/completions")
    assert server.kind == SpanKind.SERVER and server.parent is None
    sid = server.context.span_id
    for name in ("routegate.admit", "routegate.route", "routegate.reserve"):
        assert parent_of(one(spans, name)) == sid, name
    assert len({s.context.trace_id for s in spans}) == 1
    attrs = dict(server.attributes or {})
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.request.model"] == "smart"
    assert attrs["gen_ai.response.model"] == "strong"
    assert attrs["gen_ai.usage.input_tokens"] == 7
    assert attrs["gen_ai.usage.output_tokens"] == 5
    assert attrs["gen_ai.request.max_tokens"] == 12
    assert attrs["gen_ai.request.temperature"] == 0.5
    assert attrs["routegate.cost_usd"] == pytest.approx(STRONG_COST)
    assert attrs["routegate.route"] == "smart"
    assert attrs["routegate.request_id"] == resp.headers["x-routegate-request-id"]
    assert attrs["http.response.status_code"] == 200
    assert server.status.status_code == StatusCode.UNSET

    route = dict(one(spans, "routegate.route").attributes or {})
    assert route["routegate.router"] == "cost_aware"
    assert route["routegate.router.chosen_model"] == "strong"
    assert list(route["routegate.router.predictions.models"]) == ["cheap", "strong"]
    assert list(route["routegate.router.predictions.quality"]) == [0.5, 0.9]
    assert len(route["routegate.router.predictions.cost_usd"]) == 2

    call = one(spans, "chat strong")
    assert call.kind == SpanKind.CLIENT and parent_of(call) == sid
    c = dict(call.attributes or {})
    assert c["gen_ai.provider.name"] == c["gen_ai.system"] == "FakeBackend"
    assert c["gen_ai.request.model"] == "strong" and c["gen_ai.response.model"] == "strong"
    assert (c["gen_ai.usage.input_tokens"], c["gen_ai.usage.output_tokens"]) == (7, 5)
    assert c["routegate.cost_usd"] == pytest.approx(STRONG_COST)
    # The call sent upstream carries the client span's context.
    (sent,) = gw.fakes["strong"].calls
    assert sent.headers is not None
    _, trace_id, span_id, _ = sent.headers["traceparent"].split("-")
    assert int(trace_id, 16) == call.context.trace_id
    assert int(span_id, 16) == call.context.span_id


async def test_the_callers_traceparent_is_continued(
    tmp_path: Path, exporter: InMemorySpanExporter, tracing: Tracing
) -> None:
    async with in_process_gateway(POLICY, tmp_path, fakes(), tracing=tracing) as gw:
        resp = await gw.client.post(
            "/v1/chat/completions",
            json={"model": "cheap", "messages": [{"role": "user", "content": "hi"}]},
            headers={"traceparent": CALLER, "tracestate": "vendor=1"},
        )
        assert resp.status_code == 200, resp.text
    spans = exporter.get_finished_spans()
    server = one(spans, "POST /v1/chat/completions")
    assert {s.context.trace_id for s in spans} == {int(TRACE_ID, 16)}
    assert server.parent is not None and server.parent.span_id == 0x00F067AA0BA902B7
    (sent,) = gw.fakes["cheap"].calls
    assert sent.headers is not None and TRACE_ID in sent.headers["traceparent"]
    assert sent.headers["tracestate"] == "vendor=1"


async def test_a_fallback_chain_has_a_failed_call_then_the_answer(
    tmp_path: Path, exporter: InMemorySpanExporter, tracing: Tracing
) -> None:
    async with in_process_gateway(POLICY, tmp_path, fakes(), tracing=tracing) as gw:
        resp = await gw.chat("chain")
        assert resp.status_code == 200, resp.text
    spans = exporter.get_finished_spans()
    down, cheap = one(spans, "chat down"), one(spans, "chat cheap")
    assert down.status.status_code == StatusCode.ERROR
    assert (down.attributes or {})["error.type"] == "upstream_error"
    assert cheap.status.status_code == StatusCode.UNSET
    server = one(spans, "POST /v1/chat/completions")
    assert list((server.attributes or {})["routegate.fallbacks"]) == ["down"]


async def test_an_upstream_failure_is_an_error_span(
    tmp_path: Path, exporter: InMemorySpanExporter, tracing: Tracing
) -> None:
    async with in_process_gateway(POLICY, tmp_path, fakes(), tracing=tracing) as gw:
        resp = await gw.chat("broken")
        assert resp.status_code == 502, resp.text
    spans = exporter.get_finished_spans()
    server = one(spans, "POST /v1/chat/completions")
    assert server.status.status_code == StatusCode.ERROR
    assert server.status.description == "the fake upstream is down"
    assert (server.attributes or {})["error.type"] == "502"
    assert (server.attributes or {})["http.response.status_code"] == 502
    assert one(spans, "chat down").status.status_code == StatusCode.ERROR


async def test_a_bug_in_the_gateway_is_an_error_of_its_exception_type(
    tmp_path: Path, exporter: InMemorySpanExporter, tracing: Tracing
) -> None:
    def broken(call: UpstreamCall) -> Reply:
        raise RuntimeError("a bug")

    async with in_process_gateway(
        POLICY, tmp_path, FakeBackends({"cheap": broken}), tracing=tracing
    ) as gw:
        resp = await gw.chat("cheap")
        assert resp.status_code == 500, resp.text
    spans = exporter.get_finished_spans()
    server = one(spans, "POST /v1/chat/completions")
    assert server.status.status_code == StatusCode.ERROR
    assert (server.attributes or {})["error.type"] == "RuntimeError"
    assert [e.name for e in server.events] == ["exception"]
    call = one(spans, "chat cheap")
    assert (call.attributes or {})["error.type"] == "RuntimeError"


async def test_a_client_error_is_not_a_server_error(
    tmp_path: Path, exporter: InMemorySpanExporter, tracing: Tracing
) -> None:
    async with in_process_gateway(POLICY, tmp_path, fakes(), tracing=tracing) as gw:
        resp = await gw.chat("no-such-model")
        assert resp.status_code == 404, resp.text
    spans = exporter.get_finished_spans()
    server = one(spans, "POST /v1/chat/completions")
    assert server.status.status_code == StatusCode.UNSET  # a client's mistake (semconv)
    assert (server.attributes or {})["error.type"] == "404"
    assert one(spans, "routegate.admit").status.status_code == StatusCode.ERROR


async def test_a_stream_span_ends_with_the_stream_and_its_usage(
    tmp_path: Path, exporter: InMemorySpanExporter, tracing: Tracing
) -> None:
    async with in_process_gateway(POLICY, tmp_path, fakes(), tracing=tracing) as gw:
        async with gw.client.stream(
            "POST",
            "/v1/chat/completions",
            json={
                "model": "strong",
                "stream": True,
                "messages": [{"role": "user", "content": "x"}],
            },
        ) as resp:
            assert resp.status_code == 200
            body = b"".join([chunk async for chunk in resp.aiter_bytes()])
        assert b"[DONE]" in body
    spans = exporter.get_finished_spans()
    server = one(spans, "POST /v1/chat/completions")
    attrs = dict(server.attributes or {})
    # The usage is known at the stream's end only: the span ended then.
    assert attrs["routegate.stream"] is True
    assert (attrs["gen_ai.usage.input_tokens"], attrs["gen_ai.usage.output_tokens"]) == (7, 5)
    assert attrs["routegate.cost_usd"] == pytest.approx(STRONG_COST)
    call = one(spans, "chat strong")
    assert parent_of(call) == server.context.span_id
    assert (call.attributes or {})["gen_ai.usage.output_tokens"] == 5
    assert (call.attributes or {})["gen_ai.response.model"] == "strong"
    assert call.end_time is not None and server.end_time is not None
    assert call.end_time <= server.end_time


async def test_cascade_steps_are_spans_under_the_cascade(
    tmp_path: Path, exporter: InMemorySpanExporter, tracing: Tracing
) -> None:
    async with in_process_gateway(POLICY, tmp_path, fakes(), tracing=tracing) as gw:
        resp = await gw.chat("cascade")
        assert resp.status_code == 200, resp.text
    spans = exporter.get_finished_spans()
    server = one(spans, "POST /v1/chat/completions")
    cascade = one(spans, "routegate.cascade")
    assert parent_of(cascade) == server.context.span_id
    steps = [one(spans, "chat cheap"), one(spans, "chat strong")]
    for i, step in enumerate(steps):
        assert parent_of(step) == cascade.context.span_id
        assert (step.attributes or {})["routegate.cascade.step"] == i
    c = dict(cascade.attributes or {})
    assert list(c["routegate.cascade.steps"]) == ["cheap", "strong"]
    assert c["routegate.cascade.escalations"] == 1
    first = dict(cascade.events[0].attributes or {})
    assert first["gen_ai.request.model"] == "cheap" and first["routegate.cascade.escalate"] is True
    attrs = dict(server.attributes or {})
    assert attrs["routegate.cost_usd"] == pytest.approx(CHEAP_COST + STRONG_COST)
    assert attrs["gen_ai.usage.input_tokens"] == 14


async def test_a_messages_request_is_traced_too(
    tmp_path: Path, exporter: InMemorySpanExporter, tracing: Tracing
) -> None:
    async with in_process_gateway(POLICY, tmp_path, fakes(), tracing=tracing) as gw:
        resp = await gw.client.post(
            "/v1/messages",
            json={
                "model": "cheap",
                "max_tokens": 8,
                "messages": [{"role": "user", "content": "x"}],
            },
        )
        assert resp.status_code == 200, resp.text
    server = one(exporter.get_finished_spans(), "POST /v1/messages")
    attrs = dict(server.attributes or {})
    assert attrs["routegate.api"] == "messages" and attrs["gen_ai.request.max_tokens"] == 8


async def test_embeddings_and_a_cache_hit(
    tmp_path: Path, exporter: InMemorySpanExporter, tracing: Tracing
) -> None:
    async with in_process_gateway(POLICY, tmp_path, fakes(), tracing=tracing) as gw:
        for _ in range(2):
            resp = await gw.client.post("/v1/embeddings", json={"model": "vectors", "input": "x"})
            assert resp.status_code == 200, resp.text
    spans = exporter.get_finished_spans()
    servers = by_name(spans, "POST /v1/embeddings")
    assert [(s.attributes or {})["gen_ai.operation.name"] for s in servers] == ["embeddings"] * 2
    assert [(s.attributes or {})["routegate.cache.hit"] for s in servers] == [False, True]
    lookups = by_name(spans, "routegate.cache")
    assert [(s.attributes or {})["routegate.cache.hit"] for s in lookups] == [False, True]
    (call,) = by_name(spans, "embeddings vec")  # the hit called no model
    assert parent_of(call) == servers[0].context.span_id


async def test_off_makes_no_span_and_sends_no_header(tmp_path: Path) -> None:
    async with in_process_gateway(POLICY, tmp_path, fakes()) as gw:
        assert gw.app.state.services.tracing.tracer is None
        resp = await gw.chat("cheap")
        assert resp.status_code == 200, resp.text
    (sent,) = gw.fakes["cheap"].calls
    assert sent.headers is None


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({}, []),
        ({"OTEL_TRACES_EXPORTER": "none"}, []),
        ({"OTEL_TRACES_EXPORTER": "otlp,console"}, ["otlp", "console"]),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, []),
    ],
)
def test_tracing_is_on_only_when_an_exporter_is_configured(
    env: dict[str, str], names: list[str]
) -> None:
    assert exporter_names(env) == names


def test_an_unknown_exporter_is_an_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "nonesuch")
    with pytest.raises(ValueError, match="OTEL_TRACES_EXPORTER=nonesuch"):
        from_env()


@pytest.mark.parametrize(("protocol", "module"), [("http/protobuf", "http"), ("grpc", "grpc")])
def test_the_env_builds_a_batching_otlp_provider(
    monkeypatch: pytest.MonkeyPatch, protocol: str, module: str
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "gw-test")
    tracing = from_env()
    try:
        provider = tracing.provider
        assert isinstance(provider, TracerProvider)
        assert provider.resource.attributes["service.name"] == "gw-test"
        (processor,) = provider._active_span_processor._span_processors
        assert type(processor).__name__ == "BatchSpanProcessor"
        exporter = processor._batch_processor._exporter  # type: ignore[attr-defined]
        assert type(exporter).__module__.startswith(f"opentelemetry.exporter.otlp.proto.{module}")
    finally:
        if tracing.provider is not None:
            tracing.provider.shutdown()
