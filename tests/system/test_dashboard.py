"""The dashboard in headless Chromium against a real gateway process: login, live charts whose
data match the requests sent, spend equal to the request log's, per-API figures, and the
master-key guard."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from gateway.accounting.request_log import read_records
from tests.support import vllm_metrics
from tests.support.browser import browser_page, screenshot
from tests.support.gateway import GatewayProcess
from tests.support.upstream import Upstream

if TYPE_CHECKING:
    from playwright.sync_api import Page

MASTER = "master-dashboard-key"
MESSAGES = [{"role": "user", "content": "hello"}]

POLICY = """
version: 1
defaults: {{max_tokens: 5}}
models:
  alpha:
    provider: vllm
    endpoints: [{a}]
    pricing: {{input_per_1m: 1.0, output_per_1m: 2.0}}
  beta:
    provider: vllm
    endpoints: [{b}]
    pricing: {{input_per_1m: 3.0, output_per_1m: 6.0}}
routes:
  cheap: {{models: [alpha]}}
  paced:
    models: [beta]
    pacing: {{budget_usd: 1.0, period: day}}
"""


@pytest.fixture(scope="module")
def upstreams() -> Iterator[tuple[Upstream, Upstream]]:
    # alpha serves a vLLM /metrics page (its load shows in the Endpoints table), beta none.
    page = vllm_metrics.new_names(3, 1, 0.25, 30, 40)
    a, b = Upstream("alpha", metrics_text=page).start(), Upstream("beta").start()
    yield a, b
    a.stop()
    b.stop()


def start_gateway(
    upstreams: tuple[Upstream, Upstream], tmp_path: Path, env: dict[str, str]
) -> GatewayProcess:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(a=upstreams[0].base_url, b=upstreams[1].base_url))
    return GatewayProcess(policy, tmp_path, env=env).start()


@pytest.fixture
def gateway(upstreams: tuple[Upstream, Upstream], tmp_path: Path) -> Iterator[GatewayProcess]:
    gw = start_gateway(upstreams, tmp_path, {"ROUTEGATE_MASTER_KEY": MASTER})
    yield gw
    gw.stop()


def chat(gw: GatewayProcess, secret: str, model: str) -> str:
    resp = httpx.post(
        gw.url + "/v1/chat/completions",
        json={"model": model, "messages": MESSAGES},
        headers={"authorization": f"Bearer {secret}"},
    )
    assert resp.status_code == 200, resp.text
    return resp.headers["x-routegate-request-id"]


def chart_data(page: Page, canvas_id: str) -> dict:
    return page.evaluate(
        """(id) => {
            const chart = Chart.getChart(document.getElementById(id));
            if (!chart) return null;
            return {
                labels: chart.data.labels,
                datasets: chart.data.datasets.map((d) => ({label: d.label, data: d.data})),
            };
        }""",
        canvas_id,
    )


def table_rows(page: Page, table: str) -> list[list[str]]:
    return page.eval_on_selector_all(
        f"#{table} tbody tr",
        "rows => rows.map(r => [...r.querySelectorAll('td')].map(td => td.textContent))",
    )


def api_rows(page: Page) -> dict[str, list[str]]:
    """The APIs table as shown: API -> its requests, errors and spend cells."""
    cells = page.eval_on_selector_all(
        "#apis-table tbody tr",
        "(rows) => rows.map((r) => [...r.cells].map((c) => c.textContent.trim()))",
    )
    return {row[0]: row[1:] for row in cells}


def dataset(chart: dict, label: str) -> dict[str, float]:
    data = next(d["data"] for d in chart["datasets"] if d["label"] == label)
    return dict(zip(chart["labels"], data, strict=True))


def test_without_the_master_key_the_dashboard_is_closed(gateway: GatewayProcess) -> None:
    page = httpx.get(gateway.url + "/dashboard")
    assert page.status_code == 303
    assert page.headers["location"] == "/dashboard/login?next=/dashboard"
    for auth in ({}, {"authorization": "Bearer wrong"}):
        data = httpx.get(gateway.url + "/dashboard/data.json", headers=auth)
        assert data.status_code == 401
        assert data.json()["error"]["code"] == "invalid_master_key"
    # A virtual key is not the master key.
    _, secret = gateway.new_key(team="search")
    bad = httpx.get(
        gateway.url + "/dashboard/data.json", headers={"authorization": f"Bearer {secret}"}
    )
    assert bad.status_code == 401
    ok = httpx.get(
        gateway.url + "/dashboard/data.json", headers={"authorization": f"Bearer {MASTER}"}
    )
    assert ok.status_code == 200 and ok.json()["policy"]["version"]
    wrong_login = httpx.post(gateway.url + "/dashboard/login", data={"master_key": "nope"})
    assert wrong_login.status_code == 401 and "set-cookie" not in wrong_login.headers


def test_an_open_gateway_has_an_open_dashboard(
    upstreams: tuple[Upstream, Upstream], tmp_path: Path
) -> None:
    # No master key: access.auth defaults to open, and so does the dashboard.
    gw = start_gateway(upstreams, tmp_path, {"ROUTEGATE_MASTER_KEY": ""})
    try:
        assert httpx.get(gw.url + "/dashboard").status_code == 200
        assert httpx.get(gw.url + "/dashboard/data.json").status_code == 200
        # Applying a policy always needs the master key, even here.
        resp = httpx.post(gw.url + "/dashboard/policy/apply", json={"text": "x", "who": "me"})
        assert resp.status_code == 403
    finally:
        gw.stop()


def test_dashboard_shows_live_traffic_spend_and_budgets(
    gateway: GatewayProcess, upstreams: tuple[Upstream, Upstream], tmp_path: Path
) -> None:
    key_id, secret = gateway.new_key(team="search", budget_usd=2.0, period="day", pacing="uniform")
    sent = [chat(gateway, secret, "cheap") for _ in range(3)]
    sent += [chat(gateway, secret, "paced") for _ in range(2)]
    rows = [gateway.record(request_id) for request_id in sent]
    assert {r["model"] for r in rows} == {"alpha", "beta"}

    with browser_page() as page:
        page.goto(gateway.url + "/dashboard")
        assert page.url.endswith("/dashboard/login?next=/dashboard")
        page.fill("#master-key", "wrong")
        page.click("#login-submit")
        assert "Wrong master key" in page.inner_text("#login-error")
        page.fill("#master-key", MASTER)
        page.click("#login-submit")
        page.wait_for_url(gateway.url + "/dashboard")
        cookie = next(c for c in page.context.cookies() if c["name"] == "routegate_dashboard")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert MASTER not in cookie["value"]

        models = chart_data(page, "chart-models")
        assert dataset(models, "requests") == {"alpha": 3, "beta": 2}
        assert dataset(models, "errors") == {"alpha": 0, "beta": 0}
        latency = chart_data(page, "chart-latency")
        assert set(latency["labels"]) == {"alpha", "beta"}
        assert all(v > 0 for v in dataset(latency, "p95 ms").values())
        timeline = chart_data(page, "chart-timeline")
        assert sum(dataset(timeline, "requests").values()) == 5

        log_spend = sum(r["cost_usd"] for r in read_records(gateway.log_path))
        shown = page.locator("#total-spend")
        assert float(shown.get_attribute("data-usd")) == pytest.approx(log_spend)
        assert shown.inner_text() == f"${log_spend:.6f}"
        assert page.inner_text("#total-requests") == "5"
        assert page.inner_text("#cache-hits") == "0"
        master = {"authorization": f"Bearer {MASTER}"}  # /readyz details need it
        version = httpx.get(gateway.url + "/readyz", headers=master).json()["policy_version"]
        assert page.inner_text("#policy-version") == version

        # Budgets: the paced route and the key, spend from the state store's counters.
        budgets = chart_data(page, "chart-budgets")
        spent = dataset(budgets, "spent %")
        key_label = f"key {key_id} (search)"
        paced_cost = sum(r["cost_usd"] for r in rows if r["route"] == "paced")
        assert spent["route paced"] == pytest.approx(paced_cost / 1.0 * 100)
        assert spent[key_label] == pytest.approx(log_spend / 2.0 * 100)
        planned = dataset(budgets, "planned %")
        assert 0 <= planned["route paced"] <= 100 and 0 <= planned[key_label] <= 100
        table = page.inner_text("#budgets-table")
        assert "paced" in table and key_id in table and f"${paced_cost:.6f}" in table

        # Live: the page polls data.json, so a new request shows up without a reload.
        chat(gateway, secret, "cheap")
        page.wait_for_function(
            """() => {
                const c = Chart.getChart(document.getElementById('chart-models'));
                return c.data.datasets[0].data[c.data.labels.indexOf('alpha')] === 4;
            }""",
            timeout=15_000,
        )
        assert page.inner_text("#total-requests") == "6"
        assert api_rows(page) == {"chat": ["6", "0", f"${log_spend + rows[0]['cost_usd']:.6f}"]}

        # Per API: a completions request and a refused chat get rows of their own, live.
        done = httpx.post(
            gateway.url + "/v1/completions",
            json={"model": "cheap", "prompt": "hello"},
            headers={"authorization": f"Bearer {secret}"},
        )
        assert done.status_code == 200, done.text
        refused = httpx.post(
            gateway.url + "/v1/chat/completions",
            json={"model": "nope", "messages": MESSAGES},
            headers={"authorization": f"Bearer {secret}"},
        )
        assert refused.status_code == 404
        page.wait_for_function(
            "() => document.querySelectorAll('#apis-table tbody tr').length === 2", timeout=15_000
        )
        by_api: dict[str, list[float]] = {}
        for r in read_records(gateway.log_path):
            by_api.setdefault(r["api"], []).append(r["cost_usd"])
        assert set(by_api) == {"chat", "completions"}
        assert api_rows(page) == {
            "chat": ["7", "1", f"${sum(by_api['chat']):.6f}"],
            "completions": ["1", "0", f"${sum(by_api['completions']):.6f}"],
        }

        # Endpoints: alpha's load as its /metrics says, beta without one; kept live by polling.
        endpoint_rows = {row[1]: row for row in table_rows(page, "endpoints-table")}
        alpha, beta = (u.base_url for u in upstreams)
        assert endpoint_rows[alpha][4:] == ["ok", "3", "1", "25.0%", "75.0%"]
        assert endpoint_rows[beta][4:] == ["absent", "-", "-", "-", "-"]
        upstreams[0].metrics_text = vllm_metrics.new_names(5, 0, 0.5, 30, 40)
        page.wait_for_function(
            "() => document.querySelector('#endpoints-table').innerText.includes('50.0%')",
            timeout=15_000,
        )
        shot = screenshot(page, tmp_path, "dashboard.png")
        assert shot.stat().st_size > 10_000
