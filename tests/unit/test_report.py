"""`routegate report` on real request logs: totals, groupings, savings and every output format."""

from __future__ import annotations

import csv
import io
import json
import math
import sqlite3
import statistics
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from gateway.accounting.request_log import RequestLog, RequestRecord
from gateway.cli import app

DAY1 = 1_767_225_600.0  # 2026-01-01 00:00 UTC
DAY2 = DAY1 + 86_400

# Token prices per 1M (input, output): easy to price by hand.
PRICES = {"small": (1.0, 2.0), "large": (10.0, 30.0), "remote": (5.0, 15.0)}

POLICY = """
version: 1
models:
  small:
    provider: vllm
    endpoints: [http://127.0.0.1:9/v1]
    pricing: {input_per_1m: 1, output_per_1m: 2}
  large:
    provider: vllm
    endpoints: [http://127.0.0.1:9/v1]
    pricing: {input_per_1m: 10, output_per_1m: 30}
  remote:
    provider: litellm
    model: openai/remote
    pricing: {input_per_1m: 5, output_per_1m: 15}
routes:
  cheap:
    models: [small, remote]
    pacing: {budget_usd: 2.0, period: day}
  casc:
    kind: cascade
    models: [small, large]
    confidence: {threshold: -1.0}
  ead:
    kind: ead
    small: small
    large: large
"""

# Each route's dearest model at these prices: the default baseline.
DEAREST = {"cheap": "remote", "casc": "large", "ead": "large"}


def price(model: str, prompt: int, completion: int) -> float:
    inp, out = PRICES[model]
    return prompt * inp / 1e6 + completion * out / 1e6


def _records() -> list[RequestRecord]:
    recs: list[RequestRecord] = []

    def add(route: str | None, model: str, prompt: int, completion: int, **kw: Any) -> None:
        n = len(recs)
        cost = kw.pop("cost", price(model, prompt, completion))
        recs.append(
            RequestRecord(
                f"r{n}", kw.pop("ts", DAY1 + 3600 * (n % 20) + 7), "chat", False, route=route,
                model=model, prompt_tokens=prompt, completion_tokens=completion, cost_usd=cost,
                latency_ms=kw.pop("latency", 100.0 + 10 * n), api_key_id=kw.pop("key", "k1"),
                team=kw.pop("team", "red"), **kw,
            )
        )  # fmt: skip

    add("cheap", "small", 120, 40)
    add("cheap", "small", 333, 17, key="k2", team="blue")
    add("cheap", "remote", 50, 500, fallbacks=["small"])
    add("cheap", "small", 120, 40, cost=0.0, extra={"cache": {"hit": True, "saved_usd": 0.00020}})
    add("cheap", "small", 90, 10, extra={"cache": {"hit": False}}, key="k2", team="blue")
    add("cheap", "small", 0, 0, cost=0.0, status=502, error="upstream down", latency=None)
    steps = [
        {"model": "small", "prompt_tokens": 200, "completion_tokens": 30,
         "cost_usd": price("small", 200, 30)},
        {"model": "large", "prompt_tokens": 200, "completion_tokens": 60,
         "cost_usd": price("large", 200, 60)},
    ]  # fmt: skip
    add("casc", "large", 200, 60, cost=steps[0]["cost_usd"] + steps[1]["cost_usd"],
        extra={"steps": steps, "escalations": 1})  # fmt: skip
    add("casc", "small", 80, 20, extra={"steps": steps[:1], "escalations": 0}, key="k2")
    add("casc", "small", 70, 25, extra={"escalations": 0}, ts=DAY2 + 60)
    add("ead", "small", 64, 128, extra={"switches": 3, "large_token_share": 0.25}, team="blue")
    add("ead", "small", 64, 100, extra={"switches": 0, "large_token_share": 0.0})
    add(None, "large", 10, 10, key=None, team=None)  # a model asked for by name
    # A learned-style row: the router's predictions for the chosen model and the baseline.
    add("cheap", "small", 100, 100,
        extra={"predictions": {"small": {"quality": 0.6}, "remote": {"quality": 0.9}}})  # fmt: skip
    add("cheap", "remote", 100, 100,
        extra={"predictions": {"small": {"quality": 0.5}, "remote": {"quality": 0.7}}},
        ts=DAY2 + 7200)  # fmt: skip
    return recs


@pytest.fixture
def log_and_policy(tmp_path: Path) -> tuple[Path, Path, list[RequestRecord]]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    path = tmp_path / "requests.sqlite"
    log = RequestLog(path)
    recs = _records()
    for rec in recs:
        log.write(rec)
    assert log.flush()
    log.close()
    return path, policy, recs


def run(*args: str | Path) -> Any:
    result = CliRunner().invoke(app, ["report", *map(str, args)], env={"COLUMNS": "250"})
    return result


def report_json(log: Path, policy: Path, *args: str) -> dict[str, Any]:
    result = run("--log", log, "--policy", policy, "--format", "json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def baseline_cost(rec: RequestRecord, model: str | None = None) -> float:
    if rec.route is None:
        return rec.cost_usd  # no routing decision: counted at what it cost
    return price(model or DEAREST[rec.route], rec.prompt_tokens, rec.completion_tokens)


def test_totals_equal_the_exact_sum_of_row_costs(log_and_policy) -> None:
    log, policy, recs = log_and_policy
    data = report_json(log, policy)
    total = data["total"]
    assert total["cost_usd"] == math.fsum(r.cost_usd for r in recs)
    assert total["requests"] == len(recs)
    assert total["prompt_tokens"] == sum(r.prompt_tokens for r in recs)
    assert total["completion_tokens"] == sum(r.completion_tokens for r in recs)
    # Each group is the exact sum of its own rows, and the groups add up to the total.
    groups = {g["route"]: g for g in data["groups"]}
    assert set(groups) == {"cheap", "casc", "ead", "(model by name)"}
    for name, group in groups.items():
        rows = [r for r in recs if (r.route or "(model by name)") == name]
        assert group["cost_usd"] == math.fsum(r.cost_usd for r in rows)
        assert group["requests"] == len(rows)
    assert round(math.fsum(g["cost_usd"] for g in groups.values()), 2) == round(
        total["cost_usd"], 2
    )


def test_savings_against_each_routes_dearest_model(log_and_policy) -> None:
    log, policy, recs = log_and_policy
    data = report_json(log, policy)
    assert data["baselines"] == DEAREST
    expected = math.fsum(baseline_cost(r) for r in recs)
    assert data["total"]["baseline_cost_usd"] == pytest.approx(expected, rel=1e-12)
    assert data["total"]["savings_usd"] == pytest.approx(
        expected - math.fsum(r.cost_usd for r in recs), rel=1e-12
    )
    cheap = next(g for g in data["groups"] if g["route"] == "cheap")
    cheap_rows = [r for r in recs if r.route == "cheap"]
    assert cheap["baseline_cost_usd"] == pytest.approx(
        math.fsum(price("remote", r.prompt_tokens, r.completion_tokens) for r in cheap_rows)
    )
    # Predicted quality: the chosen model's vs the baseline's, over rows carrying both.
    assert cheap["quality_requests"] == 2
    assert cheap["predicted_quality"] == pytest.approx((0.6 + 0.7) / 2)
    assert cheap["baseline_predicted_quality"] == pytest.approx((0.9 + 0.7) / 2)


def test_baseline_model_option(log_and_policy) -> None:
    log, policy, recs = log_and_policy
    data = report_json(log, policy, "--baseline", "large")
    expected = math.fsum(baseline_cost(r, "large") for r in recs)
    assert data["total"]["baseline_cost_usd"] == pytest.approx(expected, rel=1e-12)
    assert set(data["baselines"].values()) == {"large"}
    result = run("--log", log, "--policy", policy, "--baseline", "nope")
    assert result.exit_code == 1
    assert "--baseline 'nope'" in result.output


def test_rates_latency_and_errors(log_and_policy) -> None:
    log, policy, recs = log_and_policy
    total = report_json(log, policy)["total"]
    assert (total["cache_lookups"], total["cache_hits"]) == (2, 1)
    assert total["cache_hit_rate"] == 0.5
    assert total["cache_saved_usd"] == pytest.approx(0.0002)
    # Three cascade rows, one escalated; two EAD rows, one switched.
    assert (total["cascade_requests"], total["escalation_rate"]) == (3, pytest.approx(1 / 3))
    assert (total["ead_requests"], total["switching_rate"]) == (2, 0.5)
    assert (total["errors"], total["error_rate"]) == (1, pytest.approx(1 / len(recs)))
    latencies = sorted(r.latency_ms for r in recs if r.latency_ms is not None)
    # Linear interpolation between closest ranks.
    pos = (len(latencies) - 1) * 0.95
    lo = math.floor(pos)
    p95 = latencies[lo] + (latencies[lo + 1] - latencies[lo]) * (pos - lo)
    assert total["latency_p95_ms"] == pytest.approx(p95)
    assert total["latency_p50_ms"] == pytest.approx(statistics.median(latencies))


@pytest.mark.parametrize(
    ("by", "key_of"),
    [
        ("key", lambda r: r.api_key_id or "(no key)"),
        ("team", lambda r: r.team or "(no team)"),
        ("model", lambda r: r.model),
        ("day", lambda r: "2026-01-01" if r.ts < DAY2 else "2026-01-02"),
    ],
)
def test_groupings(log_and_policy, by, key_of) -> None:
    log, policy, recs = log_and_policy
    groups = {g[by]: g for g in report_json(log, policy, "--by", by)["groups"]}
    expected: dict[str, list[RequestRecord]] = {}
    for r in recs:
        expected.setdefault(key_of(r), []).append(r)
    assert set(groups) == set(expected)
    for key, rows in expected.items():
        assert groups[key]["requests"] == len(rows)
        assert groups[key]["cost_usd"] == math.fsum(r.cost_usd for r in rows)


def test_by_hour_and_time_range(log_and_policy) -> None:
    log, policy, recs = log_and_policy
    day2 = [r for r in recs if r.ts >= DAY2]
    data = report_json(log, policy, "--since", "2026-01-02", "--by", "hour")
    assert data["total"]["requests"] == len(day2)
    assert {g["hour"] for g in data["groups"]} == {"2026-01-02 00:00", "2026-01-02 02:00"}
    before = report_json(log, policy, "--until", "2026-01-02T00:00:00+00:00")
    assert before["total"]["requests"] == len(recs) - len(day2)
    # A span back from now: the 2026 rows are long past... or in the future; never both.
    recent = report_json(log, policy, "--since", "1h")
    assert recent["total"]["requests"] in (0, len(recs))
    bad = run("--log", log, "--since", "yesterday-ish")
    assert bad.exit_code == 2
    assert "expected an ISO date" in bad.output


def test_csv_has_a_line_per_group_and_exact_total(log_and_policy) -> None:
    log, policy, recs = log_and_policy
    result = run("--log", log, "--policy", policy, "--format", "csv", "--by", "team")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["team"] for r in rows] == ["(no team)", "blue", "red", "total"]
    assert float(rows[-1]["cost_usd"]) == math.fsum(r.cost_usd for r in recs)
    assert int(rows[-1]["requests"]) == len(recs)
    assert rows[0]["escalation_rate"] == ""  # nothing to rate: left empty


def test_table_names_groups_and_total(log_and_policy) -> None:
    log, policy, recs = log_and_policy
    result = run("--log", log, "--policy", policy)
    assert result.exit_code == 0, result.output
    for word in ("cheap", "casc", "ead", "(model by name)", "total", "50.0%"):
        assert word in result.stdout
    assert f"{len(recs)}" in result.stdout


def test_a_narrow_terminal_gets_every_figure_in_full(log_and_policy) -> None:
    log, policy, _ = log_and_policy
    wide = run("--log", log, "--policy", policy)
    narrow = CliRunner().invoke(
        app, ["report", "--log", str(log), "--policy", str(policy)], env={"COLUMNS": "80"}
    )
    assert narrow.exit_code == 0, narrow.output
    assert "…" not in narrow.stdout
    assert max(map(len, narrow.stdout.splitlines())) <= 80
    total = wide.stdout.splitlines()
    spend = next(line for line in total if line.startswith("│ total")).split("│")[3].strip()
    assert spend in narrow.stdout  # the total spend, not cut short


def test_html_is_self_contained_with_readable_totals(log_and_policy, tmp_path: Path) -> None:
    log, policy, recs = log_and_policy
    out = tmp_path / "report.html"
    result = run("--log", log, "--policy", policy, "--format", "html", "--out", out)
    assert result.exit_code == 0, result.output
    page = out.read_text()
    assert "Chart.js v4.6.1" in page  # inlined, not fetched
    assert '<script src="http' not in page and "<script src='http" not in page
    assert "<script src=" not in page
    total = math.fsum(r.cost_usd for r in recs)
    assert f'id="total-cost" data-usd="{total!r}"' in page
    assert f'id="total-requests" data-count="{len(recs)}"' in page
    for canvas in ("chart-spend-over-time", "chart-routing-mix", "chart-savings"):
        assert f'<canvas id="{canvas}"' in page
    assert '<canvas id="chart-pacing-0" data-route="cheap"' in page
    # The embedded report data is the JSON report, exact values included.
    start = page.index('<script type="application/json" id="report-data">') + len(
        '<script type="application/json" id="report-data">'
    )
    embedded = json.loads(page[start : page.index("</script>", start)])
    assert embedded["total"]["cost_usd"] == total


def test_html_needs_out_and_a_missing_log_fails(tmp_path: Path) -> None:
    assert run("--log", tmp_path / "x.sqlite", "--format", "html").exit_code == 2
    result = run("--log", tmp_path / "missing.sqlite")
    assert result.exit_code == 1
    assert "no such request log" in result.output


def test_large_log_is_read_in_batches_to_the_same_exact_total(tmp_path: Path) -> None:
    path = tmp_path / "big.sqlite"
    log = RequestLog(path, batch=4096)
    costs = []
    for i in range(60_000):
        cost = (i % 97) * 1.1e-7 + 3e-9
        costs.append(cost)
        log.write(
            RequestRecord(f"b{i}", DAY1 + i, "chat", False, route="cheap", model="small",
                          prompt_tokens=i % 50, completion_tokens=i % 30, cost_usd=cost)
        )  # fmt: skip
    assert log.flush(60)
    log.close()
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    data = report_json(path, policy, "--by", "day")
    assert data["total"]["requests"] == 60_000
    assert data["total"]["cost_usd"] == math.fsum(costs)


def test_html_embeds_names_that_look_like_markup_safely(log_and_policy, tmp_path: Path) -> None:
    log, policy, _ = log_and_policy
    team = "<!--<script>"  # in a script element this kept "</script>" from closing it
    writer = RequestLog(log)
    writer.write(RequestRecord("odd", DAY1 + 5, "chat", False, route="cheap", model="small",
                               team=team))  # fmt: skip
    assert writer.flush()
    writer.close()
    out = tmp_path / "report.html"
    result = run("--log", log, "--policy", policy, "--by", "team", "--format", "html", "--out", out)
    assert result.exit_code == 0, result.output
    page = out.read_text()
    embedded = {}
    for script_id in ("report-data", "chart-data"):
        opening = f'<script type="application/json" id="{script_id}">'
        start = page.index(opening) + len(opening)
        text = page[start : page.index("</script>", start)]
        assert "<" not in text
        embedded[script_id] = json.loads(text)
    assert team in [g["team"] for g in embedded["report-data"]["groups"]]


def test_by_api_groups_rows_by_the_api_called(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    path = tmp_path / "requests.sqlite"
    log = RequestLog(path)
    # (endpoint_kind, api, cost): the backend's call kind and the API the client called; api
    # None is a row written before the column existed, its endpoint kind was the API.
    rows = [
        ("chat", "chat", 0.001), ("chat", "chat", 0.002), ("chat", "messages", 0.004),
        ("chat", "responses", 0.008), ("completions", "completions", 0.016),
        ("completions", None, 0.032), ("chat", None, 0.064), ("chat", "embeddings", 0.128),
    ]  # fmt: skip
    for n, (kind, api, cost) in enumerate(rows):
        log.write(
            RequestRecord(f"a{n}", DAY1 + n, kind, False, route="cheap", model="small",
                          cost_usd=cost, api=api)
        )  # fmt: skip
    assert log.flush()
    log.close()

    groups = {g["api"]: g for g in report_json(path, policy, "--by", "api")["groups"]}
    assert {k: (g["requests"], g["cost_usd"]) for k, g in groups.items()} == {
        "chat": (3, math.fsum([0.001, 0.002, 0.064])),
        "completions": (2, math.fsum([0.016, 0.032])),
        "messages": (1, 0.004),
        "responses": (1, 0.008),
        "embeddings": (1, 0.128),
    }
    table = run("--log", path, "--policy", policy, "--by", "api")
    assert table.exit_code == 0 and "by api" in table.stdout and "embeddings" in table.stdout
    lines = list(csv.reader(io.StringIO(run("--log", path, "--policy", policy, "--format",
                                            "csv", "--by", "api").stdout)))  # fmt: skip
    assert lines[0][0] == "api" and [line[0] for line in lines[1:]] == [
        "chat", "completions", "embeddings", "messages", "responses", "total",
    ]  # fmt: skip
    # A log from before the column: every row grouped by its endpoint kind.
    with sqlite3.connect(path) as db:
        columns = [c[1] for c in db.execute("PRAGMA table_info(requests)") if c[1] != "api"]
        db.execute(f"CREATE TABLE old AS SELECT {', '.join(columns)} FROM requests")
        db.execute("DROP TABLE requests")
        db.execute("ALTER TABLE old RENAME TO requests")
    old = {g["api"]: g["requests"] for g in report_json(path, policy, "--by", "api")["groups"]}
    assert old == {"chat": 6, "completions": 2}
