"""One request through each pipeline phase (admit, route, run, respond, account), through the
HTTP API of the in-process app with fake backends (tests/support/fake_backend.py). The same
paths through a real `routegate serve` process: tests/system/test_gateway_http.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import openai
import orjson
import pytest

from gateway.backends.base import UpstreamCall
from tests.support.fake_backend import FakeBackends, Reply, fail
from tests.support.inprocess import InProcessGateway, in_process_gateway

POLICY = """
version: 1
defaults: {timeout_s: 5, retries: 0, max_tokens: 16}
models:
  cheap:
    provider: vllm
    endpoints: [http://cheap.invalid/v1]
    pricing: {input_per_1m: 1.0, output_per_1m: 2.0}
    quality: 0.5
    fallbacks: [strong]
  strong:
    provider: vllm
    endpoints: [http://strong.invalid/v1]
    pricing: {input_per_1m: 10.0, output_per_1m: 20.0}
    quality: 0.9
routes:
  chain: {models: [cheap, strong]}
  thrifty: {kind: cost_aware, models: [strong, cheap], lambda: 1000000}
  picky: {kind: cost_aware, models: [cheap, strong], lambda: 0}
"""

# A fake reply uses 7 prompt + 5 completion tokens.
CHEAP_COST = 7 * 1e-6 + 5 * 2e-6
STRONG_COST = 7 * 10e-6 + 5 * 20e-6


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[InProcessGateway]:
    async with in_process_gateway(POLICY, tmp_path) as gateway:
        yield gateway


def _down(call: UpstreamCall) -> Reply:
    raise fail(503)


# -- admit ---------------------------------------------------------------------------------------


async def test_an_unknown_model_is_an_openai_shaped_404(gw: InProcessGateway) -> None:
    resp = await gw.chat("nope")
    assert resp.status_code == 404
    err = resp.json()["error"]
    assert (err["code"], err["param"], err["type"]) == (
        "model_not_found",
        "model",
        "invalid_request_error",
    )
    assert "'nope'" in err["message"]
    row = await gw.record(resp.headers["x-routegate-request-id"])
    assert row["status"] == 404 and row["model"] is None
    assert gw.fakes.backends["cheap"].calls == []  # refused before any model was asked


@pytest.mark.parametrize(
    ("fields", "param"),
    [({"temperature": 7}, "temperature"), ({"n": 0}, "n"), ({"messages": "hi"}, "messages")],
)
async def test_a_bad_field_is_a_400_naming_it(
    gw: InProcessGateway, fields: dict[str, object], param: str
) -> None:
    resp = await gw.chat("chain", **fields)
    assert resp.status_code == 400
    err = resp.json()["error"]
    assert err["param"] == param and param in err["message"]
    assert gw.fakes.backends["cheap"].calls == []


async def test_malformed_json_is_a_400(gw: InProcessGateway) -> None:
    resp = await gw.client.post("/v1/chat/completions", content=b'{"model": "chain", "mess')
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_json"


# -- route ---------------------------------------------------------------------------------------


async def test_a_cost_aware_route_picks_the_cheaper_model_when_cost_weighs(
    gw: InProcessGateway,
) -> None:
    thrifty = await gw.chat("thrifty", max_tokens=16)
    picky = await gw.chat("picky", max_tokens=16)
    assert thrifty.status_code == picky.status_code == 200
    assert thrifty.headers["x-routegate-model"] == "cheap"
    assert picky.headers["x-routegate-model"] == "strong"
    # The router's prediction for the chosen model is the policy's declared quality.
    assert float(thrifty.headers["x-routegate-predicted-quality"]) == pytest.approx(0.5)
    row = await gw.record(thrifty.headers["x-routegate-request-id"])
    assert set(row["extra"]["predictions"]) == {"cheap", "strong"}
    cheap, strong = (row["extra"]["predictions"][m]["cost_usd"] for m in ("cheap", "strong"))
    assert cheap < strong


# -- run: the fallback chain ---------------------------------------------------------------------


async def test_the_chain_falls_back_when_the_first_backend_errors(tmp_path: Path) -> None:
    fakes = FakeBackends({"cheap": _down})
    async with in_process_gateway(POLICY, tmp_path, fakes) as gw:
        resp = await gw.chat("chain")
        assert resp.status_code == 200, resp.text
        assert resp.json()["choices"][0]["message"]["content"] == "hi from strong"
        assert resp.headers["x-routegate-model"] == "strong"
        assert resp.headers["x-routegate-fallbacks"] == "cheap"
        row = await gw.record(resp.headers["x-routegate-request-id"])
    assert row["model"] == "strong" and row["fallbacks"] == ["cheap"]
    assert row["endpoint"] == "fake://strong"
    assert row["cost_usd"] == pytest.approx(STRONG_COST)  # the failed call cost nothing
    assert len(fakes["cheap"].calls) == len(fakes["strong"].calls) == 1


async def test_a_client_error_upstream_is_passed_back_without_fallback(tmp_path: Path) -> None:
    def bad_request(call: UpstreamCall) -> Reply:
        raise fail(400, "max_tokens is too large")

    fakes = FakeBackends({"cheap": bad_request})
    async with in_process_gateway(POLICY, tmp_path, fakes) as gw:
        resp = await gw.chat("chain")
    assert resp.status_code == 400
    assert "max_tokens is too large" in resp.json()["error"]["message"]
    assert "strong" not in fakes.backends or fakes["strong"].calls == []


async def test_everything_down_is_a_502_that_names_the_last_model(tmp_path: Path) -> None:
    fakes = FakeBackends({"cheap": _down, "strong": _down})
    async with in_process_gateway(POLICY, tmp_path, fakes) as gw:
        resp = await gw.chat("chain")
        assert resp.status_code == 502
        assert resp.json()["error"]["code"] == "upstream_error"
        row = await gw.record(resp.headers["x-routegate-request-id"])
    assert row["status"] == 502 and row["fallbacks"] == ["cheap"] and row["cost_usd"] == 0


async def test_a_model_asked_by_name_follows_its_declared_fallbacks(tmp_path: Path) -> None:
    fakes = FakeBackends({"cheap": _down})
    async with in_process_gateway(POLICY, tmp_path, fakes) as gw:
        resp = await gw.chat("cheap")
    assert resp.status_code == 200 and resp.headers["x-routegate-model"] == "strong"
    assert resp.headers["x-routegate-route"] == ""


# -- respond -------------------------------------------------------------------------------------


async def test_a_non_streaming_answer_carries_the_routegate_headers(gw: InProcessGateway) -> None:
    resp = await gw.chat("chain")
    assert resp.status_code == 200
    body = resp.json()
    assert body["model"] == "cheap" and body["choices"][0]["message"]["content"] == "hi from cheap"
    h = resp.headers
    assert h["x-routegate-request-id"].startswith("rg-")
    assert (h["x-routegate-route"], h["x-routegate-model"]) == ("chain", "cheap")
    assert float(h["x-routegate-cost-usd"]) == pytest.approx(CHEAP_COST)
    assert "x-routegate-fallbacks" not in h
    # The backend was asked with the client's body as sent.
    (call,) = gw.fakes["cheap"].calls
    assert call.kind == "chat" and call.body["messages"] == [{"role": "user", "content": "hello"}]


async def test_a_stream_sends_chunks_then_the_cost_and_done(gw: InProcessGateway) -> None:
    resp = await gw.chat("chain", stream=True)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert resp.headers["x-routegate-model"] == "cheap"
    assert "x-routegate-cost-usd" not in resp.headers  # a stream's cost comes at its end
    events = resp.text.split("\n\n")
    data = [orjson.loads(e[6:]) for e in events if e.startswith("data: {")]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in data)
    assert text == "hi from cheap"
    assert all(c["choices"] for c in data)  # no usage chunk: the client did not ask for it
    cost_line = next(e for e in events if e.startswith(": x-routegate-cost-usd="))
    assert float(cost_line.split("=")[1]) == pytest.approx(CHEAP_COST)
    assert events[-2] == "data: [DONE]"
    row = await gw.record(resp.headers["x-routegate-request-id"])
    assert row["stream"] == 1 and row["cost_usd"] == pytest.approx(CHEAP_COST)
    assert row["usage_exact"] == 1


async def test_the_openai_sdk_streams_with_usage_when_asked(gw: InProcessGateway) -> None:
    client = gw.openai()
    stream = await client.chat.completions.create(
        model="chain",
        messages=[{"role": "user", "content": "hello"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "hi from cheap"
    )
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (7, 5)
    await client.close()


async def test_the_openai_sdk_reads_a_text_completion(gw: InProcessGateway) -> None:
    client = gw.openai()
    raw = await client.completions.with_raw_response.create(model="chain", prompt="Say hi")
    done = raw.parse()
    assert done.choices[0].text == "hi from cheap" and done.model == "cheap"
    assert raw.headers["x-routegate-route"] == "chain"
    assert gw.fakes["cheap"].calls[-1].kind == "completions"
    await client.close()


async def test_a_failed_model_is_typed_for_the_sdk(tmp_path: Path) -> None:
    fakes = FakeBackends({"cheap": _down, "strong": _down})
    async with in_process_gateway(POLICY, tmp_path, fakes) as gw:
        client = gw.openai()
        with pytest.raises(openai.InternalServerError) as exc:
            await client.chat.completions.create(
                model="chain", messages=[{"role": "user", "content": "x"}]
            )
        await client.close()
    assert exc.value.status_code == 502


# -- account -------------------------------------------------------------------------------------


async def test_a_remote_model_without_pricing_costs_what_the_provider_reports(
    tmp_path: Path,
) -> None:
    policy = (
        POLICY.replace(
            "routes:\n",
            "  paid: {provider: litellm, model: openai/not-in-the-price-map}\nroutes:\n",
        )
        + "  remote: {models: [paid]}\n"
    )
    fakes = FakeBackends({"paid": lambda call: Reply("priced", provider_cost_usd=0.25)})
    async with in_process_gateway(policy, tmp_path, fakes) as gw:
        resp = await gw.chat("remote")
        assert resp.headers["x-routegate-model"] == "paid"
        assert float(resp.headers["x-routegate-cost-usd"]) == pytest.approx(0.25)
        row = await gw.record(resp.headers["x-routegate-request-id"])
    assert row["cost_usd"] == pytest.approx(0.25)


async def test_usage_and_cost_are_written_to_the_request_log(gw: InProcessGateway) -> None:
    resp = await gw.chat("chain")
    row = await gw.record(resp.headers["x-routegate-request-id"])
    assert (row["route"], row["model"], row["status"]) == ("chain", "cheap", 200)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (7, 5)
    assert row["cost_usd"] == pytest.approx(float(resp.headers["x-routegate-cost-usd"]))
    assert row["endpoint"] == "fake://cheap" and row["endpoint_kind"] == "chat"
    assert row["latency_ms"] > 0
