"""Money that cannot go negative: upstreams that report impossible usage, or answer 200 with no
answer, through the real `routegate serve` on both state stores (issue 11, items 1, 2, 3, 13).

The hostile upstream is tests/support/upstream.py's Upstream in its hostile modes. A key's
budget must never be credited (spent never decreases) nor charged more than its reservation;
every impossible report is flagged in the request log row and counted in /metrics.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from gateway.tokens import prompt_tokens_upper
from tests.support.gateway import GatewayProcess
from tests.support.upstream import Upstream

MASTER = "master-test-key"
MESSAGES = [{"role": "user", "content": "hello"}]
IN, OUT = 1e-6, 2e-6  # USD per token, both models
HONEST = 7 * IN + 5 * OUT  # what the honest upstream reports: 7 prompt + 5 completion tokens

POLICY = """
version: 1
state: {{url: "{state}", prefix: "{prefix}"}}
# eject_after: these tests are about charging; a model that keeps answering 200 without choices
# would otherwise be ejected part-way and change which model a later test reaches first.
defaults: {{max_tokens: 5, reservation_ttl_s: 30, eject_after: 100}}
models:
  fast:
    provider: vllm
    endpoints: [{bad}]
    pricing: {{input_per_1m: 1.0, output_per_1m: 2.0}}
  remote:
    provider: litellm
    model: openai/hostile
    api_base: {bad}
    pricing: {{input_per_1m: 1.0, output_per_1m: 2.0}}
  backup:
    provider: vllm
    endpoints: [{good}]
    pricing: {{input_per_1m: 1.0, output_per_1m: 2.0}}
routes:
  cheap: {{models: [fast]}}
  far: {{models: [remote]}}
  chain: {{models: [fast, backup]}}
  esc:
    kind: cascade
    models: [fast, backup]
    confidence: {{method: mean_logprob, threshold: 0}}
    stream_hold_tokens: 2
  judged:
    kind: cascade
    models: [backup, backup]
    confidence: {{method: judge, threshold: 0.5, judge_model: fast}}
  ead:
    kind: ead
    small: fast
    large: backup
    threshold: 1000000000
    chunk: 3
    span: 3
"""


@pytest.fixture(scope="module")
def bad() -> Iterator[Upstream]:
    up = Upstream("bad", stream_finish="stop").start()
    yield up
    up.stop()


@pytest.fixture(scope="module")
def good() -> Iterator[Upstream]:
    up = Upstream("good", stream_finish="stop").start()
    yield up
    up.stop()


@pytest.fixture(scope="module", params=["memory", "redis"])
def gateway(
    request: pytest.FixtureRequest,
    bad: Upstream,
    good: Upstream,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GatewayProcess]:
    state = request.getfixturevalue("redis_url") if request.param == "redis" else "memory"
    tmp = tmp_path_factory.mktemp(f"hostile-{request.param}")
    policy = tmp / "policy.yaml"
    policy.write_text(
        POLICY.format(
            state=state, bad=bad.base_url, good=good.base_url, prefix=f"h{time.time_ns()}"
        )
    )
    env = {"ROUTEGATE_MASTER_KEY": MASTER}
    gw = GatewayProcess(policy, Path(tmp), env=env).start()
    yield gw
    gw.stop()


@pytest.fixture(autouse=True)
def _honest_again(bad: Upstream) -> Iterator[None]:
    yield
    bad.mode, bad.usage_report = "ok", None


def spent(gw: GatewayProcess, key_id: str) -> tuple[float, float]:
    view = gw.admin("GET", f"/admin/keys/{key_id}").json()
    return view["spent_usd"], view["reserved_usd"]


def worst(body: dict[str, Any], completion: int, models: int = 1) -> float:
    """The reservation of one request: its prompt's bound and whole answer, per model called."""
    return models * (prompt_tokens_upper(body) * IN + completion * OUT)


def anomalies(gw: GatewayProcess) -> dict[tuple[str, str, str], float]:
    """routegate_upstream_anomalies_total by (route, model, kind)."""
    text = httpx.get(gw.url + "/metrics", headers={"authorization": f"Bearer {MASTER}"}).text
    out: dict[tuple[str, str, str], float] = {}
    for line in text.splitlines():
        if line.startswith("routegate_upstream_anomalies_total{"):
            labels, value = line[len("routegate_upstream_anomalies_total{") :].split("} ")
            parts = dict(p.split("=", 1) for p in labels.split(","))
            key = tuple(parts[k].strip('"') for k in ("route", "model", "kind"))
            out[key] = float(value)  # type: ignore[index]
    return out


def call(
    gw: GatewayProcess, secret: str, route: str, *, stream: bool = False, kind: str = "chat"
) -> tuple[int, dict[str, Any], str]:
    """(status, the answer or the error, the request id), through the openai SDK or, for
    streams, httpx reading the events to the end."""
    extra: dict[str, Any] = {"max_tokens": 5}
    if not stream:
        c = openai.OpenAI(base_url=gw.url + "/v1", api_key=secret, max_retries=0)
        try:
            if kind == "chat":
                raw = c.chat.completions.with_raw_response.create(
                    model=route, messages=MESSAGES, **extra
                )
            else:
                raw = c.completions.with_raw_response.create(model=route, prompt="hello", **extra)
        except openai.APIStatusError as exc:
            return (
                exc.status_code,
                exc.response.json(),
                exc.response.headers["x-routegate-request-id"],
            )
        return (
            raw.http_response.status_code,
            raw.parse().model_dump(),
            raw.headers["x-routegate-request-id"],
        )
    path = "/v1/chat/completions" if kind == "chat" else "/v1/completions"
    body: dict[str, Any] = {"model": route, "stream": True, **extra}
    body.update({"messages": MESSAGES} if kind == "chat" else {"prompt": "hello"})
    with httpx.stream(
        "POST", gw.url + path, json=body, headers={"authorization": f"Bearer {secret}"}
    ) as resp:
        text = resp.read().decode()
        rid = resp.headers["x-routegate-request-id"]
        status = resp.status_code
    assert text.rstrip().endswith("data: [DONE]"), text
    assert '"error"' not in text, text  # no in-band error: the stream ran to its end
    return status, {"events": text}, rid


def body_of(kind: str) -> dict[str, Any]:
    return {"messages": MESSAGES} if kind == "chat" else {"prompt": "hello"}


# -- items 1 and 2: impossible usage is clamped, flagged, counted; never credited ------------

CASES = [
    # (mode, route, kind, stream, kinds expected in the log row)
    ("negative_usage", "cheap", "chat", False, {"negative"}),
    ("negative_usage", "cheap", "chat", True, {"negative"}),
    ("negative_usage", "cheap", "completions", False, {"negative"}),
    ("negative_usage", "far", "chat", False, {"negative"}),
    ("negative_usage", "far", "completions", True, {"negative"}),
    ("absurd_usage", "cheap", "chat", False, {"over_bound"}),
    ("absurd_usage", "cheap", "completions", True, {"over_bound"}),
    ("absurd_usage", "far", "chat", False, {"over_bound"}),
    ("absurd_usage", "far", "chat", True, {"over_bound"}),
    ("non_numeric_usage", "cheap", "chat", False, {"not_a_number", "missing"}),
    ("non_numeric_usage", "cheap", "chat", True, {"not_a_number", "missing"}),
    ("no_usage", "cheap", "chat", False, {"missing_usage"}),
    ("no_usage", "cheap", "completions", True, {"missing_usage"}),
    ("no_usage", "far", "chat", False, {"missing_usage"}),
]


@pytest.mark.parametrize(("mode", "route", "kind", "stream", "flagged"), CASES)
def test_impossible_usage_is_clamped_flagged_and_never_credits(
    gateway: GatewayProcess,
    bad: Upstream,
    mode: str,
    route: str,
    kind: str,
    stream: bool,
    flagged: set[str],
) -> None:
    key_id, secret = gateway.new_key(budget_usd=1.0)
    before = anomalies(gateway)
    call(gateway, secret, route, kind=kind, stream=stream)  # an honest answer first
    honest, _ = spent(gateway, key_id)
    assert honest == pytest.approx(HONEST) or route == "far"  # litellm may re-count a stream

    bad.mode = mode
    status, _, rid = call(gateway, secret, route, kind=kind, stream=stream)
    assert status == 200
    row = gateway.record(rid)
    reserved = worst(body_of(kind), 5)
    assert row["status"] == 200
    assert 0 <= row["cost_usd"] <= reserved + 1e-12
    assert row["prompt_tokens"] >= 0 and 0 <= row["completion_tokens"] <= 5
    anomaly = row["extra"]["usage_anomaly"]
    assert flagged <= set(anomaly["kinds"]), anomaly
    assert anomaly["charged_usd"] == pytest.approx(row["cost_usd"])
    assert not row["usage_exact"]

    total, held = spent(gateway, key_id)
    assert honest <= total <= honest + reserved + 1e-9  # never credited, never over-charged
    assert total == pytest.approx(honest + row["cost_usd"], abs=2e-6)  # micro-dollar rounding
    assert held == 0
    after = anomalies(gateway)
    model = "remote" if route == "far" else "fast"
    for flag in flagged:
        assert after.get((route, model, flag), 0) > before.get((route, model, flag), 0)


def test_twenty_negative_answers_never_lower_the_spend(
    gateway: GatewayProcess, bad: Upstream
) -> None:
    key_id, secret = gateway.new_key(budget_usd=1.0)
    bad.mode = "negative_usage"
    last = 0.0
    for _ in range(20):
        status, answer, _ = call(gateway, secret, "cheap")
        assert status == 200
        # The client is shown what it is charged for, not the upstream's numbers.
        assert answer["usage"]["completion_tokens"] == 0
        now, _ = spent(gateway, key_id)
        assert now >= last
        last = now
    assert last > 0  # the prompt is still paid for


def test_a_fractional_count_is_an_anomaly_charged_rounded_up(
    gateway: GatewayProcess, bad: Upstream
) -> None:
    _, secret = gateway.new_key(budget_usd=1.0)
    bad.usage_report = {"prompt_tokens": 7, "completion_tokens": 2.5, "total_tokens": 9.5}
    status, _, rid = call(gateway, secret, "cheap")
    assert status == 200
    row = gateway.record(rid)
    assert row["completion_tokens"] == 3
    assert row["extra"]["usage_anomaly"]["kinds"] == ["not_an_integer"]


# -- cascades and EAD: every call clamped to its own bound -----------------------------------


@pytest.mark.parametrize(("route", "models"), [("esc", 2), ("judged", 3), ("ead", 2)])
@pytest.mark.parametrize("mode", ["negative_usage", "absurd_usage"])
@pytest.mark.parametrize("stream", [False, True])
def test_cascades_clamp_each_call(
    gateway: GatewayProcess, bad: Upstream, route: str, models: int, mode: str, stream: bool
) -> None:
    key_id, secret = gateway.new_key(budget_usd=1.0)
    bad.mode = mode
    kind = "completions" if route == "ead" else "chat"
    status, _, rid = call(gateway, secret, route, kind=kind, stream=stream)
    assert status == 200
    row = gateway.record(rid)
    assert row["status"] == 200
    calls = row["extra"]["usage_anomaly"]["calls"]
    assert {c["model"] for c in calls} >= {"fast"}
    assert row["cost_usd"] >= 0
    total, held = spent(gateway, key_id)
    assert total == pytest.approx(row["cost_usd"], abs=2e-6) and held == 0
    if route != "ead":  # EAD's reservation is looser still (calls x re-sent text)
        judge = 1e-3 if route == "judged" else 0.0  # the judge reads a bounded prompt
        assert total <= worst(body_of(kind), 5, models) + judge


# -- item 3: the reservation covers the largest limit the upstream honours ------------------


def test_reservation_covers_max_completion_tokens_over_max_tokens(
    gateway: GatewayProcess,
) -> None:
    small, large = worst(body_of("chat"), 1), worst(body_of("chat"), 60)
    key_id, secret = gateway.new_key(budget_usd=(small + large) / 2)
    c = openai.OpenAI(base_url=gateway.url + "/v1", api_key=secret, max_retries=0)
    with pytest.raises(openai.RateLimitError) as exc:
        c.chat.completions.create(
            model="cheap", messages=MESSAGES, max_tokens=1, max_completion_tokens=60
        )
    assert exc.value.body["code"] == "budget_exceeded"
    assert f"${large:.4f}" in exc.value.message
    assert spent(gateway, key_id) == (0, 0)
    # A limit of 1 either way fits the same budget.
    assert c.chat.completions.create(
        model="cheap", messages=MESSAGES, max_tokens=1, max_completion_tokens=1
    )


def test_reservation_covers_best_of(gateway: GatewayProcess) -> None:
    body = body_of("completions")
    one, three = worst(body, 20), worst(body, 60)
    _, secret = gateway.new_key(budget_usd=(one + three) / 2)
    c = openai.OpenAI(base_url=gateway.url + "/v1", api_key=secret, max_retries=0)
    with pytest.raises(openai.RateLimitError) as exc:
        c.completions.create(model="cheap", prompt="hello", max_tokens=20, best_of=3)
    assert exc.value.body["code"] == "budget_exceeded"
    assert c.completions.create(model="cheap", prompt="hello", max_tokens=20)


# -- item 13: a 200 that is no answer is a 502, and what it used is charged ------------------


@pytest.mark.parametrize(
    ("mode", "route", "usage_report", "charged"),
    [
        ("no_choices", "cheap", None, HONEST),  # the reported usage
        ("bad_choices", "cheap", None, HONEST),
        ("no_choices", "cheap", {}, None),  # no usage either: the worst case, flagged
        ("no_choices", "far", None, None),  # litellm drops the usage with the answer
    ],
)
def test_a_200_without_choices_is_a_charged_502(
    gateway: GatewayProcess,
    bad: Upstream,
    mode: str,
    route: str,
    usage_report: dict[str, Any] | None,
    charged: float | None,
) -> None:
    key_id, secret = gateway.new_key(budget_usd=1.0)
    bad.mode, bad.usage_report = mode, usage_report
    status, error, rid = call(gateway, secret, route)
    assert status == 502
    assert error["error"]["type"] and error["error"]["code"] == "upstream_error"
    assert "200" in error["error"]["message"]
    row = gateway.record(rid)
    reserved = worst(body_of("chat"), 5)
    expected = reserved if charged is None else charged
    assert row["status"] == 502 and row["cost_usd"] == pytest.approx(expected)
    if charged is None:
        assert not row["usage_exact"]
        assert "missing_usage" in row["extra"]["usage_anomaly"]["kinds"]
    assert spent(gateway, key_id)[0] == pytest.approx(expected, abs=2e-6)


def test_a_200_without_choices_fails_over_and_both_calls_are_charged(
    gateway: GatewayProcess, bad: Upstream, good: Upstream
) -> None:
    key_id, secret = gateway.new_key(budget_usd=1.0)
    bad.mode = "no_choices"
    status, answer, rid = call(gateway, secret, "chain")
    assert status == 200 and answer["choices"][0]["message"]["content"] == "hi from good"
    row = gateway.record(rid)
    assert row["fallbacks"] == ["fast"]
    assert [s["model"] for s in row["extra"]["steps"]] == ["fast", "backup"]
    assert row["cost_usd"] == pytest.approx(2 * HONEST)
    assert spent(gateway, key_id)[0] == pytest.approx(2 * HONEST, abs=2e-6)
