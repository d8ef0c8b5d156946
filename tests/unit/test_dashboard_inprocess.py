"""The dashboard's JSON feed through the in-process app: per-API figures (requests, errors,
spend) from the request log's `api` column, the endpoint kind for rows written without one.
The page itself in Chromium: tests/system/test_dashboard.py."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from gateway.accounting.request_log import RequestRecord
from tests.support.inprocess import in_process_gateway

POLICY = """
version: 1
defaults: {max_tokens: 5}
models:
  fast:
    provider: vllm
    endpoints: [http://fast.invalid/v1]
    pricing: {input_per_1m: 1.0, output_per_1m: 2.0}
routes:
  cheap: {models: [fast]}
"""
COST = 7 * 1e-6 + 5 * 2e-6  # a fake reply: 7 prompt + 5 completion tokens


async def test_the_feed_has_requests_errors_and_spend_per_api(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ROUTEGATE_MASTER_KEY", raising=False)  # an open dashboard
    async with in_process_gateway(POLICY, tmp_path) as gw:
        for _ in range(2):
            assert (await gw.chat("cheap")).status_code == 200
        assert (await gw.chat("nope")).status_code == 404  # refused, logged, an error
        done = await gw.client.post("/v1/completions", json={"model": "cheap", "prompt": "hi"})
        assert done.status_code == 200
        # Rows as other APIs write them, and one from before the api column (None).
        log = gw.app.state.services.request_log
        now = time.time()
        log.write(
            RequestRecord("m1", now, "chat", False, model="fast", cost_usd=0.25, api="messages")
        )
        log.write(
            RequestRecord("old1", now, "completions", False, model="fast", cost_usd=0.5, status=502)
        )
        await asyncio.to_thread(log.flush)

        feed = (await gw.client.get("/dashboard/data.json?window=15m")).json()
        apis = {a["api"]: a for a in feed["traffic"]["apis"]}
        assert set(apis) == {"chat", "completions", "messages"}
        assert (apis["chat"]["requests"], apis["chat"]["errors"]) == (3, 1)
        assert apis["chat"]["spend_usd"] == pytest.approx(2 * COST)
        assert (apis["completions"]["requests"], apis["completions"]["errors"]) == (2, 1)
        assert apis["completions"]["spend_usd"] == pytest.approx(COST + 0.5)
        assert (apis["messages"]["requests"], apis["messages"]["spend_usd"]) == (1, 0.25)
        # The busiest first; the per-API figures add up to the totals.
        assert [a["api"] for a in feed["traffic"]["apis"]] == ["chat", "completions", "messages"]
        assert sum(a["requests"] for a in apis.values()) == feed["traffic"]["requests"] == 6
        assert sum(a["spend_usd"] for a in apis.values()) == pytest.approx(
            feed["traffic"]["spend_usd"]
        )

        page = await gw.client.get("/dashboard")
        assert page.status_code == 200
        assert '<table id="apis-table">' in page.text and "<td>messages</td>" in page.text


async def test_the_feed_and_page_show_which_replica_served_what(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ROUTEGATE_MASTER_KEY", raising=False)  # an open dashboard
    async with in_process_gateway(POLICY, tmp_path) as gw:
        assert (await gw.chat("cheap")).status_code == 200  # this gateway: the host's name
        here = gw.app.state.holder.replica
        log = gw.app.state.services.request_log
        now = time.time()
        for i, replica in enumerate(["r2", "r2", "r1"]):
            log.write(
                RequestRecord(
                    f"x{i}", now, "chat", False, model="fast", cost_usd=0.5, replica=replica
                )
            )
        await asyncio.to_thread(log.flush)
        feed = (await gw.client.get("/dashboard/data.json?window=15m")).json()
        replicas = {r["replica"]: r for r in feed["traffic"]["replicas"]}
        assert sorted(replicas) == sorted([here, "r1", "r2"])
        assert (replicas["r2"]["requests"], replicas["r2"]["spend_usd"]) == (2, 1.0)
        assert replicas[here]["spend_usd"] == pytest.approx(COST)
        assert replicas["r1"]["latency_p50_ms"] is None  # written without a latency
        page = await gw.client.get("/dashboard")
        assert '<table id="replicas-table">' in page.text and "<td>r2</td>" in page.text
        ready = (await gw.client.get("/readyz")).json()
        assert ready["request_log"] == {"store": "sqlite", "spooled_total": 0, "spool_depth": 0}


LEARNED_POLICY = (
    POLICY
    + """  paced:
    models: [fast]
    pacing: {budget_usd: 1.0, period: day, plan: learned}
"""
)


async def test_a_learned_plan_is_shown_as_learned_not_uniform(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ROUTEGATE_MASTER_KEY", raising=False)  # an open dashboard
    async with in_process_gateway(LEARNED_POLICY, tmp_path) as gw:
        # Yesterday (UTC) all of the route's spend fell between 18:00 and 22:00.
        today = time.time() // 86400 * 86400
        log = gw.app.state.services.request_log
        for i, hour in enumerate([18, 19, 20, 21] * 3):
            ts = today - 86400 + hour * 3600 + 60
            log.write(RequestRecord(f"y{i}", ts, "chat", False, route="paced", cost_usd=0.01))
        await asyncio.to_thread(log.flush)

        feed = (await gw.client.get("/dashboard/data.json")).json()
        hours = (time.time() - today) / 3600
        (row,) = [b for b in feed["budgets"] if b["name"] == "paced"]
        # The plan: 15 % spread evenly over the day, 85 % over yesterday's busy hours.
        learned = 0.15 * hours / 24 + 0.85 * min(max(hours - 18, 0), 4) / 4
        assert row["planned_fraction"] == pytest.approx(learned, abs=1e-4)
