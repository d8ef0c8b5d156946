"""The gateway's HTTP behaviour, through the openai SDK and plain HTTP, against test upstreams
that fail on demand. (The same paths against real vLLM servers: tests/integration.)"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from gateway.accounting.request_log import read_records
from tests.support.gateway import GatewayProcess
from tests.support.upstream import Upstream, free_port

POLICY = """
version: 1
defaults:
  {{timeout_s: 5, retries: 1, health_interval_s: 0.5, cooldown_s: 1, max_request_bytes: 20000}}
models:
  fast:
    provider: vllm
    endpoints: [{a1}, {a2}]
    served_name: fast-served
    pricing: {{input_per_1m: 1.0, output_per_1m: 2.0}}
    fallbacks: [strong]
  strong:
    provider: vllm
    endpoints: [{b}]
    pricing: {{gpu_hour_usd: 3.6, input_tokens_per_second: 1000, output_tokens_per_second: 100}}
    timeout_s: 1
routes:
  cheap: {{models: [fast, strong]}}
{extra}
"""

FAST_COST = 7 * 1.0e-6 + 5 * 2.0e-6  # the test upstream reports 7 prompt + 5 completion tokens
STRONG_COST = 7 * 1e-6 + 5 * 1e-5  # $3.6/h = $0.001/s over 1000 in / 100 out tokens/s

MESSAGES = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def upstreams() -> Iterator[dict[str, Upstream]]:
    ups = {"a1": Upstream("a1").start(), "a2": Upstream("a2").start(), "b": Upstream("b").start()}
    yield ups
    for up in ups.values():
        up.stop()


@pytest.fixture(scope="module")
def gateway(
    upstreams: dict[str, Upstream], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    work = tmp_path_factory.mktemp("gw")
    policy = work / "policy.yaml"
    policy.write_text(write_policy(upstreams))
    gw = GatewayProcess(policy, work).start()
    yield gw
    gw.stop()


def write_policy(ups: dict[str, Upstream], extra: str = "") -> str:
    return POLICY.format(
        a1=ups["a1"].base_url, a2=ups["a2"].base_url, b=ups["b"].base_url, extra=extra
    )


@pytest.fixture(autouse=True)
def _healthy(upstreams: dict[str, Upstream]) -> Iterator[None]:
    for up in upstreams.values():
        up.mode = "ok"
    yield
    broken = any(up.mode != "ok" for up in upstreams.values())
    for up in upstreams.values():
        up.mode = "ok"
    if broken:
        time.sleep(1.2)  # let cooled-down endpoints be re-probed before the next test


@pytest.fixture
def client(gateway: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)


def test_route_answers_with_headers_cost_and_log(
    client: openai.OpenAI, gateway: GatewayProcess, upstreams: dict[str, Upstream]
) -> None:
    raw = client.chat.completions.with_raw_response.create(model="cheap", messages=MESSAGES)
    resp = raw.parse()
    assert resp.choices[0].message.content in {"hi from a1", "hi from a2"}
    assert resp.model == "fast"
    assert raw.headers["x-routegate-route"] == "cheap"
    assert raw.headers["x-routegate-model"] == "fast"
    assert float(raw.headers["x-routegate-cost-usd"]) == pytest.approx(FAST_COST)
    # The upstream is asked under its served name, with the client's parameters untouched.
    assert upstreams["a1"].bodies[-1:] + upstreams["a2"].bodies[-1:]
    sent = (upstreams["a1"].bodies + upstreams["a2"].bodies)[-1]
    assert sent["model"] == "fast-served" and sent["messages"] == MESSAGES

    row = gateway.record(raw.headers["x-routegate-request-id"])
    assert row["route"] == "cheap" and row["model"] == "fast" and row["status"] == 200
    assert (row["prompt_tokens"], row["completion_tokens"]) == (7, 5)
    assert row["cost_usd"] == pytest.approx(FAST_COST)
    assert row["endpoint"] in {upstreams["a1"].base_url, upstreams["a2"].base_url}


def test_tools_and_unknown_fields_pass_through(
    client: openai.OpenAI, upstreams: dict[str, Upstream]
) -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    client.chat.completions.create(
        model="strong",
        messages=MESSAGES,
        tools=tools,
        max_tokens=9,
        stop=["x"],
        extra_body={"top_k": 3},
    )
    sent = upstreams["b"].bodies[-1]
    assert sent["tools"] == tools and sent["top_k"] == 3 and sent["max_tokens"] == 9
    assert sent["stop"] == ["x"]


def test_text_completion(client: openai.OpenAI) -> None:
    raw = client.completions.with_raw_response.create(model="strong", prompt="Once")
    assert raw.parse().choices[0].text == "hi from b"
    assert float(raw.headers["x-routegate-cost-usd"]) == pytest.approx(STRONG_COST)


def test_stream_usage_only_when_asked(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="fast", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "t0 t1 t2 t3 t4 "
    )
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5
    # Per-chunk usage from upstream is for accounting only: OpenAI sends it on the last chunk.
    assert all(c.usage is None for c in chunks[:-1])

    plain = list(client.chat.completions.create(model="fast", messages=MESSAGES, stream=True))
    assert all(c.usage is None and c.choices for c in plain)


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="nope", messages=MESSAGES)
    assert exc.value.body["code"] == "model_not_found"
    assert exc.value.body["param"] == "model"


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        ({"model": "fast", "messages": MESSAGES, "temperature": 7}, "temperature"),
        ({"model": "fast", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"model": "fast", "messages": MESSAGES, "n": 0}, "n"),
        ({"model": "fast"}, "messages"),
        ({"messages": MESSAGES}, "model"),
    ],
)
def test_bad_field_is_400_naming_it(gateway: GatewayProcess, payload: dict, param: str) -> None:
    resp = httpx.post(gateway.url + "/v1/chat/completions", json=payload)
    assert resp.status_code == 400
    err = resp.json()["error"]
    assert err["param"] == param and param in err["message"]
    assert err["type"] == "invalid_request_error"


def test_malformed_json_and_too_large(gateway: GatewayProcess) -> None:
    resp = httpx.post(gateway.url + "/v1/chat/completions", content=b'{"model": "fast", "mess')
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_json"
    big = {"model": "fast", "messages": [{"role": "user", "content": "x" * 30000}]}
    resp = httpx.post(gateway.url + "/v1/chat/completions", json=big)
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "request_too_large"


def test_upstream_client_error_is_passed_back_without_fallback(
    client: openai.OpenAI, upstreams: dict[str, Upstream]
) -> None:
    for up in upstreams.values():
        up.mode = "400"
    hits = upstreams["b"].hits
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="fast", messages=MESSAGES)
    assert exc.value.body["param"] == "max_tokens"
    assert upstreams["b"].hits == hits  # a client mistake is not retried elsewhere


def test_endpoint_failure_retries_on_the_other_endpoint(
    client: openai.OpenAI, upstreams: dict[str, Upstream]
) -> None:
    upstreams["a1"].mode = "500"
    for _ in range(4):
        raw = client.chat.completions.with_raw_response.create(model="fast", messages=MESSAGES)
        assert raw.parse().choices[0].message.content == "hi from a2"
        assert raw.headers["x-routegate-model"] == "fast"


def test_model_failure_falls_back_and_says_so(
    client: openai.OpenAI, gateway: GatewayProcess, upstreams: dict[str, Upstream]
) -> None:
    upstreams["a1"].mode = upstreams["a2"].mode = "500"
    raw = client.chat.completions.with_raw_response.create(model="fast", messages=MESSAGES)
    assert raw.parse().choices[0].message.content == "hi from b"
    assert raw.headers["x-routegate-model"] == "strong"
    assert raw.headers["x-routegate-fallbacks"] == "fast"
    assert float(raw.headers["x-routegate-cost-usd"]) == pytest.approx(STRONG_COST)
    row = gateway.record(raw.headers["x-routegate-request-id"])
    assert row["fallbacks"] == ["fast"] and row["model"] == "strong"


def test_stream_falls_back_before_first_byte(
    client: openai.OpenAI, upstreams: dict[str, Upstream]
) -> None:
    upstreams["a1"].mode = upstreams["a2"].mode = "500"
    raw = client.chat.completions.with_raw_response.create(
        model="cheap", messages=MESSAGES, stream=True
    )
    assert raw.headers["x-routegate-model"] == "strong"
    assert len([c for c in raw.parse() if c.choices]) == 5


def test_invalid_upstream_json_is_a_502_that_falls_back(
    client: openai.OpenAI, gateway: GatewayProcess, upstreams: dict[str, Upstream]
) -> None:
    upstreams["a1"].mode = upstreams["a2"].mode = "garbage"
    raw = client.chat.completions.with_raw_response.create(model="fast", messages=MESSAGES)
    assert raw.headers["x-routegate-model"] == "strong"
    upstreams["b"].mode = "garbage"
    with pytest.raises(openai.InternalServerError) as exc:
        client.chat.completions.create(model="strong", messages=MESSAGES)
    assert exc.value.status_code == 502 and "invalid JSON" in exc.value.message
    row = gateway.record(exc.value.response.headers["x-routegate-request-id"])
    assert row["status"] == 502 and row["model"] == "strong"


def test_everything_down_is_502_and_timeout_504(
    client: openai.OpenAI, upstreams: dict[str, Upstream]
) -> None:
    for up in upstreams.values():
        up.mode = "500"
    with pytest.raises(openai.InternalServerError) as exc:
        client.chat.completions.create(model="cheap", messages=MESSAGES)
    assert exc.value.status_code == 502
    upstreams["b"].mode, upstreams["b"].delay_s = "slow", 3  # strong's timeout is 1 s
    with pytest.raises(openai.APIStatusError) as exc2:
        client.chat.completions.create(model="strong", messages=MESSAGES)
    assert exc2.value.status_code == 504
    assert exc2.value.body["code"] == "upstream_timeout"


# Each API's stream request: a client that goes away after the stream's first event.
STREAMS = {
    "chat": ("/v1/chat/completions", {}),
    "messages": ("/v1/messages", {"max_tokens": 200}),
}


@pytest.mark.parametrize("api", STREAMS)
def test_client_disconnect_cancels_upstream_and_is_counted(
    gateway: GatewayProcess, upstreams: dict[str, Upstream], api: str
) -> None:
    upstreams["b"].mode = "drip"
    before = upstreams["b"].disconnects
    path, extra = STREAMS[api]
    body = {"model": "strong", "messages": MESSAGES, "stream": True, **extra}
    with httpx.stream("POST", gateway.url + path, json=body) as resp:
        assert resp.status_code == 200
        request_id = resp.headers["x-routegate-request-id"]
        lines = resp.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))  # the first event
        assert first.startswith("data: {")
    deadline = time.time() + 5
    while upstreams["b"].disconnects == before and time.time() < deadline:
        time.sleep(0.05)
    assert upstreams["b"].disconnects == before + 1, "upstream generation was not cancelled"
    row = gateway.record(request_id)
    assert (row["status"], row["api"]) == (499, api)
    assert 1 <= row["completion_tokens"] < 200
    assert row["cost_usd"] > 0


def test_an_abandoned_responses_stream_is_charged_and_logged_once(
    gateway: GatewayProcess, upstreams: dict[str, Upstream]
) -> None:
    """The Responses API's stream (gateway/dialects/responses/) left after its first event:
    the upstream is cancelled, what was generated is charged, one row with status 499."""
    upstreams["b"].mode = "drip"
    before = upstreams["b"].disconnects
    body = {"model": "strong", "input": "hello", "stream": True}
    with httpx.stream("POST", gateway.url + "/v1/responses", json=body) as resp:
        assert resp.status_code == 200
        request_id = resp.headers["x-routegate-request-id"]
        lines = resp.iter_lines()
        assert next(lines) == "event: response.created"
        assert next(lines).startswith("data: ")
    deadline = time.time() + 5
    while upstreams["b"].disconnects == before and time.time() < deadline:
        time.sleep(0.05)
    assert upstreams["b"].disconnects == before + 1, "upstream generation was not cancelled"
    row = gateway.record(request_id)
    assert (row["api"], row["status"]) == ("responses", 499)
    assert 1 <= row["completion_tokens"] < 200
    assert row["cost_usd"] > 0
    time.sleep(0.5)  # the writer batches: a second row would be written by now
    rows = [r for r in read_records(gateway.log_path) if r["request_id"] == request_id]
    assert len(rows) == 1


def test_models_health_and_metrics(gateway: GatewayProcess, client: openai.OpenAI) -> None:
    ids = {m.id: m for m in client.models.list()}
    assert {"fast", "strong", "cheap"} <= set(ids)
    assert ids["cheap"].model_extra["routegate"]["kind"] == "route"
    assert httpx.get(gateway.url + "/healthz").status_code == 200
    ready = httpx.get(gateway.url + "/readyz")
    assert ready.status_code == 200 and set(ready.json()["healthy_models"]) == {"fast", "strong"}
    client.chat.completions.create(model="cheap", messages=MESSAGES)
    text = httpx.get(gateway.url + "/metrics").text
    assert 'routegate_requests_total{model="fast",route="cheap",status="200"}' in text
    assert "routegate_request_latency_seconds_bucket" in text
    assert 'routegate_cost_usd_total{model="fast",route="cheap"}' in text
    assert 'routegate_tokens_total{kind="completion",model="fast",route="cheap"}' in text


def test_unhealthy_endpoints_are_skipped_and_reprobed(
    client: openai.OpenAI, upstreams: dict[str, Upstream], gateway: GatewayProcess
) -> None:
    upstreams["a1"].mode = "unhealthy"
    time.sleep(2.0)  # two failed probes (unhealthy_after: 2) at 0.5 s intervals, and a margin
    a1 = upstreams["a1"].hits
    for _ in range(5):
        client.chat.completions.create(model="fast", messages=MESSAGES)
    assert upstreams["a1"].hits == a1
    upstreams["a1"].mode = "ok"
    time.sleep(1.2)
    for _ in range(10):
        client.chat.completions.create(model="fast", messages=MESSAGES)
    assert upstreams["a1"].hits > a1


def test_policy_reload_rejects_bad_edit_and_applies_good(
    upstreams: dict[str, Upstream], tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(write_policy(upstreams))
    gw = GatewayProcess(policy, tmp_path).start()
    try:
        c = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
        version = httpx.get(gw.url + "/readyz").json()["policy_version"]

        policy.write_text(write_policy(upstreams, "  best: {models: [strong, ghost]}\n"))
        deadline = time.time() + 5
        while (
            not httpx.get(gw.url + "/readyz").json()["last_reload_error"] and time.time() < deadline
        ):
            time.sleep(0.1)
        ready = httpx.get(gw.url + "/readyz").json()
        assert "routes.best.models[1]: unknown model 'ghost'" in ready["last_reload_error"]
        assert ready["policy_version"] == version
        assert c.chat.completions.create(model="cheap", messages=MESSAGES).model == "fast"

        # A valid edit applies on SIGHUP as well as on file change.
        policy.write_text(write_policy(upstreams, "  best: {models: [strong]}\n"))
        gw.signal(signal.SIGHUP)
        deadline = time.time() + 5
        while (
            httpx.get(gw.url + "/readyz").json()["policy_version"] == version
            and time.time() < deadline
        ):
            time.sleep(0.1)
        assert c.chat.completions.create(model="best", messages=MESSAGES).model == "strong"
        assert "reload rejected" in gw.output()
    finally:
        gw.stop()


def test_an_unreadable_policy_file_is_rejected_and_the_watcher_lives_on(
    upstreams: dict[str, Upstream], tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(write_policy(upstreams))
    gw = GatewayProcess(policy, tmp_path).start()
    try:
        version = httpx.get(gw.url + "/readyz").json()["policy_version"]
        policy.write_bytes(b"version: 1\nmodels: \xff\xfe\n")  # not UTF-8
        deadline = time.time() + 5
        while (
            not httpx.get(gw.url + "/readyz").json()["last_reload_error"] and time.time() < deadline
        ):
            time.sleep(0.1)
        ready = httpx.get(gw.url + "/readyz").json()
        # The reader names where the bad byte is (line 2, column 9: byte 19).
        assert ready["last_reload_error"].endswith(":2:9 (file): not UTF-8 at byte 19")
        assert ready["policy_version"] == version
        # The file watcher survived: a good edit still applies, without SIGHUP.
        policy.write_text(write_policy(upstreams, "  best: {models: [strong]}\n"))
        deadline = time.time() + 5
        while (
            httpx.get(gw.url + "/readyz").json()["policy_version"] == version
            and time.time() < deadline
        ):
            time.sleep(0.1)
        assert httpx.get(gw.url + "/readyz").json()["policy_version"] != version
    finally:
        gw.stop()


def test_in_flight_request_finishes_on_the_policy_it_started_with(
    upstreams: dict[str, Upstream], tmp_path: Path
) -> None:
    import threading

    policy = tmp_path / "policy.yaml"
    policy.write_text(write_policy(upstreams))
    gw = GatewayProcess(policy, tmp_path).start()
    try:
        for name in ("a1", "a2"):
            upstreams[name].mode, upstreams[name].delay_s = "slow", 2.5
        c = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
        result: dict[str, object] = {}
        worker = threading.Thread(
            target=lambda: result.update(
                r=c.chat.completions.create(model="fast", messages=MESSAGES)
            )
        )
        worker.start()
        time.sleep(0.2)
        # The new policy no longer has the model the running request is using.
        version = httpx.get(gw.url + "/readyz").json()["policy_version"]
        policy.write_text(
            "models:\n  strong:\n    provider: vllm\n"
            f"    endpoints: [{upstreams['b'].base_url}]\n"
            "    pricing: {input_per_1m: 1, output_per_1m: 1}\n"
        )
        deadline = time.time() + 5
        while httpx.get(gw.url + "/readyz").json()["policy_version"] == version:
            assert time.time() < deadline, "the new policy was not applied"
            time.sleep(0.05)
        assert worker.is_alive(), "the request should still be running across the reload"
        worker.join(10)
        assert result["r"].choices[0].message.content in {"hi from a1", "hi from a2"}  # type: ignore[attr-defined]
        with pytest.raises(openai.NotFoundError):
            c.chat.completions.create(model="fast", messages=MESSAGES)
    finally:
        gw.stop()


DEAD_POLICY = """
version: 1
defaults: {{timeout_s: 5, retries: 1, health_interval_s: 3, cooldown_s: 20}}
models:
  gone:
    provider: vllm
    endpoints: [{dead1}, {dead2}]
    pricing: {{input_per_1m: 1.0, output_per_1m: 2.0}}
  faraway:
    provider: litellm
    model: openai/faraway
    api_base: {dead1}
    pricing: {{input_per_1m: 1.0, output_per_1m: 2.0}}
"""


@pytest.mark.parametrize("stream", [False, True])
def test_unreachable_upstreams_are_a_plain_503_with_retry_after(
    tmp_path: Path, stream: bool
) -> None:
    dead = [f"http://127.0.0.1:{free_port()}/v1" for _ in range(2)]
    policy = tmp_path / "policy.yaml"
    policy.write_text(DEAD_POLICY.format(dead1=dead[0], dead2=dead[1]))
    gw = GatewayProcess(policy, tmp_path).start()
    try:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0)
        for model in ("gone", "faraway"):
            with pytest.raises(openai.APIStatusError) as exc:
                client.chat.completions.create(model=model, messages=MESSAGES, stream=stream)
            resp = exc.value.response
            assert resp.status_code == 503
            err = resp.json()["error"]
            assert err["code"] == "upstream_unavailable"
            # What failed, in words: no host, port or exception repr of the gateway's insides.
            assert err["message"] == f"model '{model}': could not connect to its endpoint(s)"
            for leak in ("127.0.0.1", "ConnectionKey", "ClientConnectorError", "Errno"):
                assert leak not in resp.text
            retry_after = int(resp.headers["retry-after"])
            # vLLM: the endpoints' cooldown (both ejected); litellm: the default health interval.
            assert 1 <= retry_after <= 20
            # The request log keeps the details for the operator.
            row = gw.record(resp.headers["x-routegate-request-id"])
            assert row["status"] == 503 and row["error"].startswith(err["message"])
            assert "unreachable" in row["error"] and "127.0.0.1" in row["endpoint"]
    finally:
        gw.stop()
