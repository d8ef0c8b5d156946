"""Virtual keys, route permissions, rate limits and hard budgets through the gateway's HTTP API
and the `routegate keys` CLI, on both state stores (in-process and a real redis-server)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from typer.testing import CliRunner

from gateway.cli import app
from tests.support.gateway import GatewayProcess
from tests.support.upstream import Upstream

MASTER = "master-test-key"
MESSAGES = [{"role": "user", "content": "hello"}]
COST = 7 * 1e-6 + 5 * 2e-6  # the test upstream answers 7 prompt + 5 completion tokens

POLICY = """
version: 1
state: {{url: "{state}", prefix: "{prefix}"}}
defaults: {{max_tokens: 5, reservation_ttl_s: 30}}
models:
  fast:
    provider: vllm
    endpoints: [{up}]
    pricing: {{input_per_1m: 1.0, output_per_1m: 2.0}}
routes:
  cheap: {{models: [fast]}}
  other: {{models: [fast]}}
"""


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    up = Upstream("u").start()
    yield up
    up.stop()


@pytest.fixture(params=["memory", "redis"])
def gateway(
    request: pytest.FixtureRequest, upstream: Upstream, tmp_path: Path
) -> Iterator[GatewayProcess]:
    state = request.getfixturevalue("redis_url") if request.param == "redis" else "memory"
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(state=state, up=upstream.base_url, prefix=f"t{time.time_ns()}"))
    gw = GatewayProcess(policy, tmp_path, env={"ROUTEGATE_MASTER_KEY": MASTER}).start()
    yield gw
    gw.stop()


def client(gw: GatewayProcess, secret: str | None) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=secret or "none", max_retries=0)


def test_with_a_master_key_keys_are_required_from_the_start(gateway: GatewayProcess) -> None:
    # access.auth defaults to keys whenever ROUTEGATE_MASTER_KEY is set: no key yet, still 401
    # (it used to be open until the first key, so an emptied store opened the gateway).
    with pytest.raises(openai.AuthenticationError) as exc:
        client(gateway, None).chat.completions.create(model="cheap", messages=MESSAGES)
    assert exc.value.body["code"] == "invalid_api_key"
    key_id, secret = gateway.new_key(team="search")
    assert secret.startswith("sk-rg-")

    with pytest.raises(openai.AuthenticationError) as exc:
        client(gateway, "sk-rg-wrong").chat.completions.create(model="cheap", messages=MESSAGES)
    assert exc.value.body["code"] == "invalid_api_key"
    resp = httpx.post(
        gateway.url + "/v1/chat/completions", json={"model": "cheap", "messages": MESSAGES}
    )
    assert resp.status_code == 401 and resp.json()["error"]["code"] == "missing_api_key"

    raw = client(gateway, secret).chat.completions.with_raw_response.create(
        model="cheap", messages=MESSAGES
    )
    assert raw.parse().choices[0].message.content == "hi from u"
    row = gateway.record(raw.headers["x-routegate-request-id"])
    assert row["api_key_id"] == key_id and row["team"] == "search"

    assert gateway.admin("DELETE", f"/admin/keys/{key_id}").status_code == 200
    with pytest.raises(openai.AuthenticationError) as exc:
        client(gateway, secret).chat.completions.create(model="cheap", messages=MESSAGES)
    assert exc.value.body["code"] == "key_revoked"


def test_admin_api_needs_the_master_key_and_never_shows_hashes(gateway: GatewayProcess) -> None:
    assert gateway.admin("GET", "/admin/keys", key="nope").status_code == 401
    key_id, _ = gateway.new_key(team="search", budget_usd=5, period="day", rpm=10, routes=["cheap"])
    listed = gateway.admin("GET", "/admin/keys").json()["data"]
    assert [k["id"] for k in listed] == [key_id]
    assert "secret_hash" not in listed[0] and "secret" not in listed[0]
    assert listed[0]["spent_usd"] == 0 and listed[0]["resets_at"].endswith("00:00 UTC")
    bad = gateway.admin("POST", "/admin/keys", {"team": "x", "budget_usd": -1})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "budget_usd"
    assert gateway.admin("DELETE", "/admin/keys/key_nope").status_code == 404


def test_route_permission_is_403(gateway: GatewayProcess) -> None:
    _, secret = gateway.new_key(team="search", routes=["cheap"])
    assert client(gateway, secret).chat.completions.create(model="cheap", messages=MESSAGES)
    with pytest.raises(openai.PermissionDeniedError) as exc:
        client(gateway, secret).chat.completions.create(model="other", messages=MESSAGES)
    assert "may not use 'other'" in exc.value.message


def test_budget_is_never_overrun_and_says_when_it_resets(gateway: GatewayProcess) -> None:
    # Room for about 10 answers at the actual cost; reservations hold the worst case.
    key_id, secret = gateway.new_key(team="search", budget_usd=10.5 * COST, period="month")
    c = client(gateway, secret)
    answered, refused = 0, None
    for _ in range(20):
        try:
            c.chat.completions.create(model="cheap", messages=MESSAGES, max_tokens=5)
            answered += 1
        except openai.RateLimitError as exc:
            refused = exc
            break
    assert refused is not None and refused.body["code"] == "budget_exceeded"
    assert f"API key {key_id} (team search)" in refused.message
    assert "The budget resets" in refused.message and "-01 00:00 UTC" in refused.message
    key = gateway.admin("GET", f"/admin/keys/{key_id}").json()
    assert key["spent_usd"] == pytest.approx(answered * COST)
    assert key["spent_usd"] <= key["budget_usd"] and key["reserved_usd"] == 0
    assert answered >= 8  # the worst-case bound is not so loose that it wastes the budget


def test_streams_are_charged(gateway: GatewayProcess) -> None:
    key_id, secret = gateway.new_key(team="search", budget_usd=1.0)
    stream = client(gateway, secret).chat.completions.create(
        model="cheap", messages=MESSAGES, stream=True, max_tokens=5
    )
    assert len([c for c in stream if c.choices]) == 5
    spent = gateway.admin("GET", f"/admin/keys/{key_id}").json()["spent_usd"]
    assert spent == pytest.approx(COST)


def test_requests_per_minute_limit_has_retry_after(gateway: GatewayProcess) -> None:
    _, secret = gateway.new_key(team="search", rpm=3)
    c = client(gateway, secret)
    for _ in range(3):
        c.chat.completions.create(model="cheap", messages=MESSAGES)
    with pytest.raises(openai.RateLimitError) as exc:
        c.chat.completions.create(model="cheap", messages=MESSAGES)
    assert exc.value.body["code"] == "rate_limit_exceeded"
    # A sliding-window counter spreads the previous minute's hits evenly over it, so the wait
    # it computes can reach past one minute, never past two.
    assert 1 <= int(exc.value.response.headers["retry-after"]) <= 120


def test_tokens_per_minute_limit(gateway: GatewayProcess) -> None:
    _, secret = gateway.new_key(team="search", tpm=40)  # each answer uses 12 tokens
    c = client(gateway, secret)
    answered = 0
    with pytest.raises(openai.RateLimitError) as exc:
        for _ in range(10):
            c.chat.completions.create(model="cheap", messages=MESSAGES)
            answered += 1
    assert answered == 3 and "tokens per minute" in exc.value.message


def test_a_paced_key_carries_its_price_multiplier(gateway: GatewayProcess) -> None:
    bad = gateway.admin("POST", "/admin/keys", {"team": "t", "pacing": "uniform"})
    assert bad.status_code == 400 and "pacing needs a budget_usd" in bad.json()["error"]["message"]

    key_id, secret = gateway.new_key(team="search", budget_usd=1.0, period="day", pacing="weekday")
    assert gateway.admin("GET", f"/admin/keys/{key_id}").json()["pacing"] == {
        "budget_usd": 1.0,
        "period": "day",
        "plan": "weekday",
    }
    raw = client(gateway, secret).chat.completions.with_raw_response.create(
        model="cheap", messages=MESSAGES
    )
    # Nothing spent yet: at or behind plan, so the multiplier is at most neutral.
    assert 0 < float(raw.headers["x-routegate-price-multiplier"]) <= 1.0
    row = gateway.record(raw.headers["x-routegate-request-id"])
    assert row["extra"]["price_multiplier"] == pytest.approx(
        float(raw.headers["x-routegate-price-multiplier"]), rel=1e-3
    )


def test_keys_cli(gateway: GatewayProcess) -> None:
    runner = CliRunner(env={"ROUTEGATE_MASTER_KEY": MASTER, "COLUMNS": "200"})
    made = runner.invoke(
        app,
        [
            "keys",
            "create",
            "--url",
            gateway.url,
            "--team",
            "ads",
            "--budget-usd",
            "50",
            "--period",
            "month",
            "--rpm",
            "60",
            "--routes",
            "cheap,other",
        ],
    )
    assert made.exit_code == 0, made.output
    secret = made.output.strip().splitlines()[-1]
    assert secret.startswith("sk-rg-")
    assert client(gateway, secret).chat.completions.create(model="other", messages=MESSAGES)

    listed = runner.invoke(app, ["keys", "list", "--url", gateway.url])
    assert listed.exit_code == 0 and "ads" in listed.output and "$50.0000" in listed.output
    key_id = next(w for w in listed.output.split() if w.startswith("key_"))
    revoked = runner.invoke(app, ["keys", "revoke", key_id, "--url", gateway.url])
    assert revoked.exit_code == 0 and f"revoked {key_id}" in revoked.output
    again = runner.invoke(app, ["keys", "revoke", "key_missing", "--url", gateway.url])
    assert again.exit_code == 1 and "No API key key_missing" in again.output

    wrong = CliRunner(env={"ROUTEGATE_MASTER_KEY": "bad"}).invoke(
        app, ["keys", "list", "--url", gateway.url]
    )
    assert wrong.exit_code == 1 and "master key" in wrong.output
