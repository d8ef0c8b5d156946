"""Fuzzing every endpoint that takes a body: thousands of generated requests with a fixed seed.

Each request is a valid body with some fields replaced by arbitrary JSON (wrong types, huge
integers, deep nesting, unknown fields), or raw bytes that are not JSON at all. The upstreams
always answer, so no 5xx is a true upstream failure here: every answer must be below 500, every
error OpenAI-shaped, and the gateway must stay up with bounded memory.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from tests.support.gateway import GatewayProcess
from tests.support.upstream import Upstream

MASTER = "fuzz-master-key"
KEY_ENV = "ROUTEGATE_FUZZ_REMOTE_KEY"
RSS_GROWTH_LIMIT_MB = 150  # the log and caches grow a little; a leak per request grows far more

POLICY = """
version: 1
defaults: {{timeout_s: 5, retries: 0, max_tokens: 8, max_request_bytes: 65536}}
models:
  local:
    provider: vllm
    endpoints: [{up}]
    pricing: {{input_per_1m: 1.0, output_per_1m: 2.0}}
  remote:
    provider: litellm
    model: openai/fuzz-remote
    api_base: {up}
    api_key_env: {key_env}
    pricing: {{input_per_1m: 3.0, output_per_1m: 6.0}}
routes:
  cheap: {{models: [local, remote]}}
  ladder:
    kind: cascade
    models: [local, remote]
    confidence: {{method: mean_logprob, threshold: -1.0}}
"""

# Fields the OpenAI APIs define (and a few they do not), to be given arbitrary values.
CHAT_FIELDS = [
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n",
    "stop", "stream", "stream_options", "tools", "tool_choice", "response_format", "logprobs",
    "top_logprobs", "logit_bias", "seed", "user", "presence_penalty", "frequency_penalty",
    "parallel_tool_calls", "functions", "function_call", "metadata", "best_of", "store",
    "service_tier", "modalities", "prediction", "reasoning_effort", "extra", "",
]  # fmt: skip
COMPLETION_FIELDS = [
    "model", "prompt", "max_tokens", "temperature", "top_p", "n", "stop", "stream",
    "stream_options", "logprobs", "echo", "suffix", "best_of", "logit_bias", "seed", "user",
    "presence_penalty", "frequency_penalty", "extra",
]  # fmt: skip
KEY_FIELDS = ["team", "name", "budget_usd", "period", "rpm", "tpm", "routes", "pacing", "x"]

scalars = (
    st.none()
    | st.booleans()
    | st.integers()  # unbounded: 2**80 does not fit SQLite, int64 or a token count
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(["cheap", "ladder", "local", "remote", "user", "system", "auto", "-1"])
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system", "assistant", "tool", "robot"]) | json_values},
        optional={"content": json_values, "name": json_values, "tool_calls": json_values},
    ),
    max_size=3,
)
deep = st.integers(min_value=50, max_value=3000).map(lambda n: "[" * n + "]" * n)

SETTINGS = settings(
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def mutated(base: dict[str, Any], fields: list[str], extra: st.SearchStrategy) -> st.SearchStrategy:
    """`base` with some of `fields` replaced by arbitrary values and some removed."""

    def apply(changes: dict[str, Any], dropped: list[str]) -> dict[str, Any]:
        body = {k: v for k, v in base.items() if k not in dropped}
        body.update(changes)
        return body

    return st.builds(
        apply,
        st.dictionaries(st.sampled_from(fields), scalars | json_values | extra, max_size=4),
        st.lists(st.sampled_from(list(base)), max_size=1),
    )


# Every model and route in the policy: a vLLM pool, a litellm remote, a chain and a cascade.
TARGETS = st.sampled_from(["cheap", "ladder", "local", "remote"])
chat_bodies = TARGETS.flatmap(
    lambda model: mutated(
        {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
        CHAT_FIELDS,
        messages,
    )
)
completion_bodies = TARGETS.flatmap(
    lambda model: mutated(
        {"model": model, "prompt": "hi", "max_tokens": 4}, COMPLETION_FIELDS, st.nothing()
    )
)
key_bodies = mutated({"team": "fuzz"}, KEY_FIELDS, st.nothing())
policy_bodies = st.fixed_dictionaries(
    {}, optional={"text": st.text(max_size=300) | deep | json_values, "who": json_values}
)
raw_bodies = st.binary(max_size=300) | deep.map(str.encode)


def encode(body: Any) -> bytes:
    # The standard library writes any integer, however large; orjson would refuse.
    return json.dumps(body).encode()


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    up = Upstream("fuzz").start()
    yield up
    up.stop()


@pytest.fixture(scope="module")
def gateway(
    upstream: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    work = tmp_path_factory.mktemp("fuzz")
    policy = work / "policy.yaml"
    policy.write_text(POLICY.format(up=upstream.base_url, key_env=KEY_ENV))
    env = {"ROUTEGATE_MASTER_KEY": MASTER, KEY_ENV: "sk-fuzz"}
    gw = GatewayProcess(policy, work, env=env).start()
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def secret(gateway: GatewayProcess) -> str:
    resp = httpx.post(
        gateway.url + "/admin/keys",
        json={"team": "fuzz"},
        headers={"authorization": f"Bearer {MASTER}"},
    )
    assert resp.status_code == 201, resp.text
    return resp.json()["secret"]


def session(gateway: GatewayProcess, source: str, token: str | None) -> httpx.Client:
    """A client from its own loopback address, so one fuzzer's failed logins (which a brute-force
    guard may throttle per address) never change what another fuzzer sees."""
    headers = {"authorization": f"Bearer {token}"} if token else {}
    transport = httpx.HTTPTransport(local_address=source)
    return httpx.Client(base_url=gateway.url, headers=headers, transport=transport, timeout=30)


def rss_mb(gateway: GatewayProcess) -> float:
    assert gateway.proc is not None
    for line in Path(f"/proc/{gateway.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def check(resp: httpx.Response, what: str) -> None:
    """Below 500; an error is OpenAI-shaped JSON; a stream ends with [DONE] or an error event."""
    assert resp.status_code < 500, f"{what}: {resp.status_code} {resp.text[:300]}"
    if resp.status_code >= 400:
        body = resp.json()
        error = body.get("error") if isinstance(body, dict) else None
        assert isinstance(error, dict), f"{what}: not OpenAI-shaped: {resp.text[:300]}"
        assert isinstance(error.get("message"), str) and error["message"], resp.text[:300]
        assert isinstance(error.get("type"), str) and error["type"], resp.text[:300]
        assert "param" in error and "code" in error, resp.text[:300]
    elif resp.headers.get("content-type", "").startswith("text/event-stream"):
        assert resp.text.rstrip().endswith("data: [DONE]"), f"{what}: {resp.text[-300:]}"


def post(client: httpx.Client, path: str, content: bytes, content_type: str) -> httpx.Response:
    return client.post(path, content=content, headers={"content-type": content_type})


@pytest.fixture(scope="module")
def baseline_rss(gateway: GatewayProcess, secret: str) -> float:
    with session(gateway, "127.0.0.1", secret) as c:
        for _ in range(20):  # warm up every path once before measuring
            check(post(c, "/v1/chat/completions", encode({"model": "cheap", "messages": [
                {"role": "user", "content": "hi"}]}), "application/json"), "warm-up")  # fmt: skip
    return rss_mb(gateway)


def fuzz_json(
    client: httpx.Client, paths: list[str], bodies: st.SearchStrategy, examples: int, at: int
) -> None:
    """POST `examples` bodies drawn from `bodies` (seed `at`) to `paths`; check every answer."""

    @settings(SETTINGS, max_examples=examples)
    @seed(at)
    @given(path=st.sampled_from(paths), body=bodies)
    def run(path: str, body: Any) -> None:
        data = encode(body)
        check(post(client, path, data, "application/json"), f"{path} {data[:200]!r}")

    run()


def test_fuzz_chat_completions(gateway: GatewayProcess, secret: str, baseline_rss: float) -> None:
    with session(gateway, "127.0.0.2", secret) as c:
        fuzz_json(c, ["/v1/chat/completions"], chat_bodies, 1200, 20261201)


def test_fuzz_completions(gateway: GatewayProcess, secret: str, baseline_rss: float) -> None:
    with session(gateway, "127.0.0.3", secret) as c:
        fuzz_json(c, ["/v1/completions"], completion_bodies, 800, 20261202)


def test_fuzz_admin_keys(gateway: GatewayProcess, baseline_rss: float) -> None:
    with session(gateway, "127.0.0.4", MASTER) as c:
        fuzz_json(c, ["/admin/keys"], key_bodies, 400, 20261203)


def test_fuzz_policy_page(gateway: GatewayProcess, baseline_rss: float) -> None:
    paths = ["/dashboard/policy/validate", "/dashboard/policy/rollback"]
    with session(gateway, "127.0.0.5", MASTER) as c:
        fuzz_json(c, paths, policy_bodies, 400, 20261204)


def test_fuzz_login(gateway: GatewayProcess, baseline_rss: float) -> None:
    """The login form answers HTML; only its status matters here."""
    with session(gateway, "127.0.0.6", None) as c:

        @settings(SETTINGS, max_examples=200)
        @seed(20261205)
        @given(
            form=st.dictionaries(
                st.sampled_from(["master_key", "next", "x"]), st.text(max_size=40), max_size=3
            )
        )
        def run(form: dict[str, str]) -> None:
            data = urlencode(form).encode()
            resp = post(c, "/dashboard/login", data, "application/x-www-form-urlencoded")
            assert resp.status_code < 500, f"login {data[:200]!r}: {resp.status_code}"

        run()


RAW_TARGETS = [
    "/v1/chat/completions",
    "/v1/completions",
    "/admin/keys",
    "/dashboard/policy/validate",
    "/dashboard/login",
]


def test_fuzz_raw_bodies(gateway: GatewayProcess, secret: str, baseline_rss: float) -> None:
    """Bytes that are not JSON (or not UTF-8, or nested past any parser's stack) everywhere."""
    clients = {
        path: session(gateway, f"127.0.1.{i + 1}", MASTER if "/v1/" not in path else secret)
        for i, path in enumerate(RAW_TARGETS)
    }
    try:

        @settings(SETTINGS, max_examples=400)
        @seed(20261206)
        @given(path=st.sampled_from(RAW_TARGETS), data=raw_bodies)
        def run(path: str, data: bytes) -> None:
            kind = (
                "application/x-www-form-urlencoded"
                if path.endswith("login")
                else "application/json"
            )
            resp = post(clients[path], path, data, kind)
            if path.endswith("login"):  # an HTML form: only its status matters
                assert resp.status_code < 500, f"login {data[:200]!r}: {resp.status_code}"
            else:
                check(resp, f"{path} {data[:200]!r}")

        run()
    finally:
        for client in clients.values():
            client.close()


def test_still_alive_with_bounded_memory(gateway: GatewayProcess, baseline_rss: float) -> None:
    """Runs after the fuzzers (file order): the same process answers, and did not balloon."""
    assert gateway.proc is not None and gateway.proc.poll() is None, gateway.output()
    assert httpx.get(gateway.url + "/healthz").status_code == 200
    growth = rss_mb(gateway) - baseline_rss
    assert growth < RSS_GROWTH_LIMIT_MB, f"RSS grew {growth:.0f} MB over the fuzz run"
