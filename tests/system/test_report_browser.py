"""The HTML report (`routegate report --format html`) opened in headless Chromium from a
file:// URL: every chart draws with data, and the total shown is the request log's sum."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.accounting.request_log import RequestLog, RequestRecord, read_records
from tests.support.browser import browser_page, screenshot

POLICY = """version: 1
models:
  alpha:
    provider: vllm
    endpoints: [http://127.0.0.1:9/v1]
    pricing: {input_per_1m: 1.0, output_per_1m: 2.0}
  beta:
    provider: vllm
    endpoints: [http://127.0.0.1:9/v1]
    pricing: {input_per_1m: 10.0, output_per_1m: 20.0}
routes:
  cheap: {models: [alpha, beta]}
  paced:
    models: [beta]
    pacing: {budget_usd: 1.0, period: day}
"""


def write_log(path: Path) -> None:
    log = RequestLog(path)
    now = time.time()
    rows = [("cheap", "alpha", 100, 50)] * 4 + [("paced", "beta", 200, 100)] * 2
    for i, (route, model, prompt, completion) in enumerate(rows):
        price_in, price_out = (1.0, 2.0) if model == "alpha" else (10.0, 20.0)
        log.write(
            RequestRecord(
                request_id=f"req-{i}",
                ts=now - 600 + i * 60,
                endpoint_kind="chat",
                stream=False,
                route=route,
                model=model,
                prompt_tokens=prompt,
                completion_tokens=completion,
                cost_usd=(prompt * price_in + completion * price_out) / 1e6,
                latency_ms=20.0 + i,
                status=200,
            )
        )
    assert log.flush()
    log.close()


def test_html_report_renders_in_chromium(tmp_path: Path) -> None:
    log, policy, html = tmp_path / "requests.sqlite", tmp_path / "policy.yaml", tmp_path / "r.html"
    policy.write_text(POLICY)
    write_log(log)
    made = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "report", "--log", str(log), "--policy",
         str(policy), "--format", "html", "--out", str(html)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert "<script src" not in html.read_text()  # self-contained: opens with no network
    total = sum(r["cost_usd"] for r in read_records(log))

    with browser_page() as page:
        page.goto(html.as_uri())
        charts = page.evaluate(
            """() => Array.from(document.querySelectorAll('canvas')).map((canvas) => {
                const chart = Chart.getChart(canvas);
                return {
                    id: canvas.id,
                    drawn: !!chart,
                    points: chart ? chart.data.datasets.reduce(
                        (n, d) => n + d.data.filter((v) => v !== null && Number(v) !== 0).length, 0
                    ) : 0,
                };
            })"""
        )
        ids = {c["id"] for c in charts}
        assert {"chart-spend-over-time", "chart-routing-mix", "chart-savings"} <= ids
        assert "chart-pacing-0" in ids  # the paced route's budget against its plan
        for chart in charts:
            assert chart["drawn"] and chart["points"] > 0, chart

        cost = page.locator("#total-cost")
        assert float(cost.get_attribute("data-usd")) == pytest.approx(total)
        assert cost.inner_text() == f"${total:.6f}"
        assert page.locator("#total-requests").get_attribute("data-count") == "6"
        shot = screenshot(page, tmp_path, "report.png")
        assert shot.stat().st_size > 10_000
