"""Cached prompt tokens priced as what they cost: read from the usage report, priced at the
model's cached input price, logged (the `cached_tokens` column), settled on budgets with the
discounted cost, and shown in the report with what prompt caching saved."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from gateway.backends.base import UpstreamCall
from gateway.backends.usage_bounds import read_usage
from gateway.cli import app
from gateway.dialects.messages.from_chat import usage as messages_usage
from gateway.report.build import build_report
from gateway.report.render import to_csv, to_html, to_tables
from gateway.tokens import CallBound
from policies.loader import PolicyError, parse_policy
from policies.pricing import price_table
from tests.support.fake_backend import FakeBackends, Reply
from tests.support.inprocess import InProcessGateway, in_process_gateway

MASTER = "master-test-key"
PROMPT, CACHED, COMPLETION = 100, 80, 5
INPUT, CACHED_PRICE, OUTPUT = 1.0, 0.1, 2.0  # USD per 1M tokens
COST = ((PROMPT - CACHED) * INPUT + CACHED * CACHED_PRICE + COMPLETION * OUTPUT) / 1e6
FULL = (PROMPT * INPUT + COMPLETION * OUTPUT) / 1e6
LONG = "a long shared prefix " * 60  # its token bound well above PROMPT: nothing is clamped

POLICY = f"""
version: 1
defaults: {{max_tokens: 5}}
models:
  fast:
    provider: vllm
    endpoints: [http://fast.invalid/v1]
    pricing: {{input_per_1m: {INPUT}, output_per_1m: {OUTPUT}, cached_input_per_1m: {CACHED_PRICE}}}
routes:
  cheap: {{models: [fast]}}
"""


def _bound() -> CallBound:
    return CallBound(prompt=1000, completion=100)


# -- reading usage ---------------------------------------------------------------------------


def test_cached_tokens_are_read_from_either_field_and_never_exceed_the_prompt() -> None:
    openai = {"prompt_tokens": 50, "completion_tokens": 3}
    details = {**openai, "prompt_tokens_details": {"cached_tokens": 32}}
    assert read_usage(details, _bound()).cached_tokens == 32
    anthropic = {**openai, "cache_read_input_tokens": 40}  # litellm's, for Anthropic
    assert read_usage(anthropic, _bound()).cached_tokens == 40
    assert read_usage(openai, _bound()).cached_tokens == 0
    assert read_usage({**openai, "prompt_tokens_details": None}, _bound()).cached_tokens == 0
    over = {**openai, "prompt_tokens_details": {"cached_tokens": 999}}
    assert read_usage(over, _bound()).cached_tokens == 50
    for odd in (-4, "32", True, float("nan")):
        odd_report = {**openai, "prompt_tokens_details": {"cached_tokens": odd}}
        usage = read_usage(odd_report, _bound())
        assert usage.cached_tokens == 0 and usage.anomaly is None  # no discount, no anomaly


# -- prices and the policy -------------------------------------------------------------------


def _prices(models: str) -> dict[str, Any]:
    return price_table(parse_policy(f"version: 1\nmodels:\n{models}", "p.yaml"))


def test_cached_price_default_and_gpu_hour_prefill() -> None:
    prices = _prices(
        "  set: {provider: vllm, endpoints: [http://h/v1],"
        " pricing: {input_per_1m: 1, output_per_1m: 2, cached_input_per_1m: 0.25}}\n"
        "  unset: {provider: vllm, endpoints: [http://h/v1],"
        " pricing: {input_per_1m: 1, output_per_1m: 2}}\n"
        "  gpu: {provider: vllm, endpoints: [http://h/v1], pricing: {gpu_hour_usd: 3.6,"
        " input_tokens_per_second: 1000, output_tokens_per_second: 100}}\n"
        "  known: {provider: litellm, model: openai/gpt-4o,"
        " pricing: {input_per_1m: 2.5, output_per_1m: 10}}\n"
        "  unknown: {provider: litellm, model: openai/no-such-model-xyz,"
        " pricing: {input_per_1m: 3, output_per_1m: 10}}\n"
    )
    m = 1_000_000
    assert prices["set"](m, 0, None, m // 2) == pytest.approx(0.5 + 0.125)
    assert prices["set"](m, 0, None) == pytest.approx(1.0)  # no cached tokens: full price
    assert prices["unset"](m, 0, None, m // 2) == pytest.approx(1.0)  # no discount unless set
    # GPU-hour pricing: $1 per 1M prefilled tokens, and a cached token is not prefilled again.
    assert prices["gpu"](m, 0, None, m // 4) == pytest.approx(0.75)
    # A remote model: litellm's cache-read price where its map has one ($1.25 for gpt-4o).
    assert prices["known"](m, 0, None, m) == pytest.approx(1.25)
    assert prices["unknown"](m, 0, None, m) == pytest.approx(3.0)


def test_cached_price_validation_names_file_line_and_field(tmp_path: Path) -> None:
    def problems(pricing: str) -> list[str]:
        text = f"version: 1\nmodels:\n  a:\n    provider: vllm\n    endpoints: [http://h/v1]\n    pricing: {pricing}\n"
        with pytest.raises(PolicyError) as exc:
            parse_policy(text, "p.yaml")
        return [str(p) for p in exc.value.problems]

    [negative] = problems("{input_per_1m: 1, output_per_1m: 2, cached_input_per_1m: -1}")
    assert negative.startswith("p.yaml:6:") and "cached_input_per_1m" in negative
    [dearer] = problems("{input_per_1m: 1, output_per_1m: 2, cached_input_per_1m: 3}")
    assert dearer.startswith("p.yaml:6:") and "must not exceed input_per_1m" in dearer
    [typo] = problems("{input_per_1m: 1, output_per_1m: 2, cached_input_per1m: 0.1}")
    assert "cached_input_per1m" in typo and "Extra inputs" in typo
    f = tmp_path / "policy.yaml"
    f.write_text(POLICY)
    assert CliRunner().invoke(app, ["policy", "validate", str(f)]).exit_code == 0


# -- through the gateway ---------------------------------------------------------------------


def _cached_reply(call: UpstreamCall) -> Reply:
    return Reply("cached answer", prompt_tokens=PROMPT, completion_tokens=COMPLETION,
                 cached_tokens=CACHED)  # fmt: skip


@pytest.fixture
async def gw(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[InProcessGateway]:
    monkeypatch.setenv("ROUTEGATE_MASTER_KEY", MASTER)
    fakes = FakeBackends({"fast": _cached_reply})
    async with in_process_gateway(POLICY, tmp_path, fakes) as gateway:
        yield gateway


async def _key(gw: InProcessGateway) -> tuple[str, str]:
    auth = {"authorization": f"Bearer {MASTER}"}
    spec = {"team": "t", "budget_usd": 1.0, "period": "month"}
    resp = await gw.client.post("/admin/keys", json=spec, headers=auth)
    assert resp.status_code == 201, resp.text
    return resp.json()["id"], resp.json()["secret"]


async def _spent(gw: InProcessGateway, key_id: str) -> float:
    auth = {"authorization": f"Bearer {MASTER}"}
    resp = await gw.client.get(f"/admin/keys/{key_id}", headers=auth)
    return float(resp.json()["spent_usd"])


def _streamed_usage(resp: httpx.Response) -> dict[str, Any]:
    lines = [ln[6:] for ln in resp.text.splitlines() if ln.startswith("data: {")]
    return [json.loads(ln) for ln in lines if '"usage"' in ln][-1]["usage"]


async def test_cached_tokens_are_charged_logged_settled_and_reported(
    gw: InProcessGateway, tmp_path: Path
) -> None:
    key_id, secret = await _key(gw)
    whole = await gw.chat("cheap", LONG, key=secret)
    assert whole.status_code == 200, whole.text
    assert whole.json()["usage"]["prompt_tokens_details"] == {"cached_tokens": CACHED}
    assert float(whole.headers["x-routegate-cost-usd"]) == pytest.approx(COST)
    streamed = await gw.chat(
        "cheap", LONG, key=secret, stream=True, stream_options={"include_usage": True}
    )
    assert streamed.status_code == 200
    assert _streamed_usage(streamed)["prompt_tokens_details"] == {"cached_tokens": CACHED}

    for resp in (whole, streamed):
        row = await gw.record(resp.headers["x-routegate-request-id"])
        assert row["cached_tokens"] == CACHED and row["prompt_tokens"] == PROMPT
        assert row["cost_usd"] == pytest.approx(COST)
        assert row["extra"]["prompt_cache_saved_usd"] == pytest.approx(FULL - COST)
    # The budget settles with the same, discounted, cost.
    assert await _spent(gw, key_id) == pytest.approx(2 * COST)

    policy = parse_policy(POLICY, "policy.yaml")
    report = build_report(gw.settings.log_path, policy, "policy.yaml", by="route")
    total = report.total
    assert total["cached_tokens"] == 2 * CACHED
    assert total["cached_token_rate"] == pytest.approx(CACHED / PROMPT)
    assert total["prompt_cache_saved_usd"] == pytest.approx(2 * (FULL - COST))
    assert report.groups["cheap"]["prompt_cache_saved_usd"] == pytest.approx(2 * (FULL - COST))
    [_, total_row] = list(csv.DictReader(io.StringIO(to_csv(report))))
    assert int(total_row["cached_tokens"]) == 2 * CACHED
    assert float(total_row["prompt_cache_saved_usd"]) == pytest.approx(2 * (FULL - COST))
    [table] = to_tables(report, width=200)
    assert "cached tok/saved" in [c.header for c in table.columns]
    page = to_html(report)
    assert f'id="cached-tokens" data-count="{2 * CACHED}"' in page
    out = CliRunner().invoke(
        app,
        ["report", "--log", str(gw.settings.log_path), "--policy", str(gw.settings.policy_path),
         "--format", "json"],
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["total"]["cached_tokens"] == 2 * CACHED


async def test_no_cached_tokens_costs_the_full_price(tmp_path: Path) -> None:
    fakes = FakeBackends({"fast": lambda call: Reply(prompt_tokens=PROMPT, completion_tokens=5)})
    async with in_process_gateway(POLICY, tmp_path, fakes) as gw:
        resp = await gw.chat("cheap", LONG)
        assert "prompt_tokens_details" not in resp.json()["usage"]
        row = await gw.record(resp.headers["x-routegate-request-id"])
        assert row["cached_tokens"] == 0 and row["cost_usd"] == pytest.approx(FULL)
        assert "prompt_cache_saved_usd" not in row["extra"]


def test_the_messages_api_counts_cache_reads_apart() -> None:
    chat = {"prompt_tokens": PROMPT, "completion_tokens": 5}
    assert messages_usage(chat) == {"input_tokens": PROMPT, "output_tokens": 5}
    cached = messages_usage({**chat, "prompt_tokens_details": {"cached_tokens": CACHED}})
    assert cached == {
        "input_tokens": PROMPT - CACHED, "output_tokens": 5, "cache_read_input_tokens": CACHED
    }  # fmt: skip
