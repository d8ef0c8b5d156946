"""The bundled example policy end to end on REAL vLLM servers and the REAL demo models, then the
money read back.

Every route of `policies/example.yaml` (fixed with a cache, learned, cascade, EAD) answers real
requests, streamed and not, on SmolLM2-135M-Instruct and Gemma 3 270M: each says Paris is the
capital of France, whichever model or mix of models writes the answer. Then `routegate report` totals equal the request log's per-request
costs to the cent, and the HTML report and the live dashboard show the same spend in headless
Chromium, with screenshots."""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from gateway.accounting.request_log import read_records
from tests.support.browser import browser_page, screenshot
from tests.support.example_policy import LARGE, SMALL, example_policy_text
from tests.support.gateway import GatewayProcess

pytestmark = pytest.mark.integration

MASTER = "master-example-test"
AUTH = {"authorization": f"Bearer {MASTER}"}  # a master key means /v1 needs a key (access.auth)
ROUTES = ["cheap", "best", "auto", "cascade", "ead"]
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def gateway(
    real_vllm_servers: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    text = example_policy_text(real_vllm_servers[SMALL], real_vllm_servers[LARGE])
    work = tmp_path_factory.mktemp("example")
    policy = work / "policy.yaml"
    policy.write_text(text)
    gw = GatewayProcess(policy, work, env={"ROUTEGATE_MASTER_KEY": MASTER}).start()
    try:
        yield gw
    finally:
        gw.stop()


def send(gw: GatewayProcess, route: str, stream: bool) -> str:
    body = {"model": route, "messages": QUESTION, "max_tokens": 10, "temperature": 0}
    if not stream:
        resp = httpx.post(gw.url + "/v1/chat/completions", json=body, headers=AUTH, timeout=120)
        assert resp.status_code == 200, (route, resp.text)
        assert "Paris" in resp.json()["choices"][0]["message"]["content"], route
        return resp.headers["x-routegate-request-id"]
    with httpx.stream(
        "POST",
        gw.url + "/v1/chat/completions",
        json={**body, "stream": True},
        headers=AUTH,
        timeout=120,
    ) as resp:
        assert resp.status_code == 200, route
        lines = [line for line in resp.iter_lines() if line]
    chunks = [orjson.loads(line[6:]) for line in lines if line.startswith("data: {")]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert "Paris" in text, route
    assert lines[-1] == "data: [DONE]"
    return resp.headers["x-routegate-request-id"]


def report(gw: GatewayProcess, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "report", "--log", str(gw.log_path),
         "--policy", str(gw.policy), *args],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done


def test_every_route_answers_and_the_report_adds_up(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    sent = [send(gateway, route, stream) for route in ROUTES for stream in (False, True)]
    sent.append(send(gateway, "cheap", False))  # the same request again: a cache hit
    rows = {r: gateway.record(r) for r in sent}
    # `cheap` has a cache: its streamed request (sent second) and the repeat are hits.
    hits = [r for r in sent if rows[r]["extra"].get("cache", {}).get("hit")]
    assert hits == [sent[1], sent[-1]]
    assert all(rows[r]["cost_usd"] == 0 and rows[r]["model"] == SMALL for r in hits)
    by_route = {rows[r]["route"] for r in sent}
    assert by_route == set(ROUTES)
    assert "steps" in rows[sent[ROUTES.index("cascade") * 2]]["extra"]
    assert "switches" in rows[sent[ROUTES.index("ead") * 2]]["extra"]

    logged = read_records(gateway.log_path)
    assert len(logged) == len(sent)
    spend = math.fsum(r["cost_usd"] for r in logged)
    assert spend > 0

    total = orjson.loads(report(gateway, "--format", "json").stdout)["total"]
    assert total["requests"] == len(sent)
    assert round(total["cost_usd"], 2) == round(spend, 2)
    assert total["cost_usd"] == pytest.approx(spend, rel=1e-12)
    assert total["cache_hits"] == 2
    assert total["cascade_requests"] >= 2 and total["ead_requests"] == 2

    html = tmp_path / "report.html"
    report(gateway, "--format", "html", "--out", str(html))
    with browser_page() as page:
        page.goto(html.as_uri())
        page.wait_for_selector("body[data-charts-ready=true]")
        shown = page.locator("#total-cost")
        assert float(shown.get_attribute("data-usd")) == pytest.approx(spend, rel=1e-12)
        assert page.locator("#total-requests").get_attribute("data-count") == str(len(sent))
        drawn = page.evaluate(
            "() => Array.from(document.querySelectorAll('canvas')).every(c => !!Chart.getChart(c))"
        )
        assert drawn
        assert screenshot(page, tmp_path, "example-report.png").stat().st_size > 10_000

        page.goto(gateway.url + "/dashboard")
        page.fill("#master-key", MASTER)
        page.click("#login-submit")
        page.wait_for_url(gateway.url + "/dashboard")
        page.wait_for_function(
            f"() => document.getElementById('total-requests').innerText === '{len(sent)}'"
        )
        spent = float(page.locator("#total-spend").get_attribute("data-usd"))
        assert spent == pytest.approx(spend, rel=1e-12)
        assert page.inner_text("#cache-hits") == "2"
        models = page.evaluate(
            "() => Chart.getChart(document.getElementById('chart-models')).data.labels"
        )
        assert {SMALL, LARGE} <= set(models)
        assert screenshot(page, tmp_path, "example-dashboard.png").stat().st_size > 10_000
