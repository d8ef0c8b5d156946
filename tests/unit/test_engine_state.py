"""The load a vLLM server reports on its /metrics: parsed for each version's names, read by the
pool on its interval from a fake upstream over real HTTP, and tolerated when absent or broken."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.backends.vllm_pool import EngineState, VllmPool
from gateway.backends.vllm_pool.engine_poll import ALL_NAMES, wanted_lines
from gateway.backends.vllm_pool.engine_state import (
    MalformedMetrics,
    NotVllmMetrics,
    parse_engine_state,
)
from gateway.metrics import MULTIPROC_DIR_ENV, Metrics
from policies.schema import VllmModel
from tests.support import vllm_metrics
from tests.support.inprocess import in_process_gateway
from tests.support.upstream import Upstream, free_port


def test_new_names_summed_over_engines() -> None:
    text = vllm_metrics.new_names(3, 2, 0.25, 300, 400, engines=2)
    s = parse_engine_state(text, 100.0)
    assert (s.running, s.waiting) == (6, 4)  # summed; waiting_by_reason is another family
    assert s.kv_usage == pytest.approx(0.25)  # averaged over the engines
    assert (s.prefix_hits, s.prefix_queries) == (600, 800)  # `_created` samples left out
    assert s.prefix_hit_rate == pytest.approx(0.75)
    assert s.recent_prefix_hit_rate is None  # no earlier read
    assert s.read_at == 100.0
    assert s.names == (
        "vllm:kv_cache_usage_perc",
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:prefix_cache_hits",
        "vllm:prefix_cache_queries",
    )


def test_a_real_page_of_vllm_0_32_whole_and_filtered() -> None:
    # Captured from a demo server (tiny-small) after three chat calls with one long prompt.
    page = (Path(__file__).parent.parent / "support" / "vllm_0_32_metrics.txt").read_text()
    whole = parse_engine_state(page, 1.0)
    assert (whole.running, whole.waiting, whole.kv_usage) == (0, 0, 0)
    assert (whole.prefix_hits, whole.prefix_queries) == (768, 1355)
    # The poller parses only the lines of the families it reads: the same figures.
    assert parse_engine_state(wanted_lines(page, ALL_NAMES), 1.0) == whole
    assert len(wanted_lines(page, ALL_NAMES)) < len(page) / 10


def test_an_untyped_page() -> None:
    # No # TYPE lines: the parser names families by their samples (`_total` kept), one each.
    text = vllm_metrics.new_names(3, 2, 0.25, 300, 400, engines=2)
    bare = "\n".join(line for line in text.splitlines() if not line.startswith("#")) + "\n"
    s = parse_engine_state(bare, 1.0)
    assert (s.running, s.prefix_hits, s.prefix_queries) == (6, 600, 800)


def test_early_v1_gpu_names() -> None:
    s = parse_engine_state(vllm_metrics.early_v1_names(1, 0, 0.5, 10, 40), 1.0)
    assert (s.running, s.waiting, s.kv_usage) == (1, 0, 0.5)
    assert s.prefix_hit_rate == pytest.approx(0.25)
    assert "vllm:gpu_cache_usage_perc" in s.names
    assert "vllm:gpu_prefix_cache_hits" in s.names


def test_v0_hit_rate_gauge() -> None:
    s = parse_engine_state(vllm_metrics.v0_names(2, 5, 0.9, 0.4), 1.0)
    assert (s.running, s.waiting, s.kv_usage, s.prefix_hit_rate) == (2, 5, 0.9, 0.4)
    assert s.prefix_hits is None and s.recent_prefix_hit_rate is None


def test_recent_hit_rate_between_reads_and_after_a_restart() -> None:
    first = parse_engine_state(vllm_metrics.new_names(0, 0, 0, 100, 400), 1.0)
    second = parse_engine_state(vllm_metrics.new_names(0, 0, 0, 190, 500), 2.0, first)
    assert second.recent_prefix_hit_rate == pytest.approx(0.9)  # 90 of the last 100 tokens
    assert second.prefix_hit_rate == pytest.approx(0.38)
    idle = parse_engine_state(vllm_metrics.new_names(0, 0, 0, 190, 500), 3.0, second)
    assert idle.recent_prefix_hit_rate is None  # nothing queried since
    restarted = parse_engine_state(vllm_metrics.new_names(0, 0, 0, 5, 10), 4.0, idle)
    assert restarted.recent_prefix_hit_rate is None  # counters went down


def test_malformed_and_foreign_pages() -> None:
    with pytest.raises(MalformedMetrics):
        parse_engine_state(vllm_metrics.MALFORMED, 1.0)
    with pytest.raises(NotVllmMetrics) as info:
        parse_engine_state(vllm_metrics.OTHER_SERVER, 1.0)
    assert not isinstance(info.value, MalformedMetrics)
    assert EngineState().empty


# -- read by the pool, over HTTP --------------------------------------------------------------


def pool(urls: list[str], client: httpx.AsyncClient, interval_s: float = 0.05) -> VllmPool:
    cfg = VllmModel(
        provider="vllm", endpoints=urls, pricing={"input_per_1m": 1, "output_per_1m": 1}
    )
    return VllmPool("m", cfg, client, health_interval_s=60, metrics_interval_s=interval_s)


async def _until(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not check():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_pool_reads_each_endpoint_and_follows_changes(
    ups: list[Upstream], client: httpx.AsyncClient
) -> None:
    ups[0].metrics_text = vllm_metrics.new_names(2, 1, 0.5, 10, 20)
    ups[1].metrics_text = vllm_metrics.early_v1_names(0, 7, 0.125, 0, 0)
    p = pool([u.base_url for u in ups], client)
    await p.start()
    try:
        states = p.engine_states()  # read once before start() returns
        a, b = states[ups[0].base_url], states[ups[1].base_url]
        assert (a.running, a.waiting, a.kv_usage, a.prefix_hit_rate) == (2, 1, 0.5, 0.5)
        assert (b.running, b.waiting, b.kv_usage, b.prefix_hit_rate) == (0, 7, 0.125, None)
        ups[0].metrics_text = vllm_metrics.new_names(5, 0, 0.75, 20, 30)
        await _until(lambda: p.engine_states()[ups[0].base_url].running == 5)
        a = p.engine_states()[ups[0].base_url]
        assert a.recent_prefix_hit_rate == pytest.approx(1.0)  # 10 more hits of 10 more
        reports = {r.endpoint: r for r in p.endpoint_reports()}
        assert reports[ups[0].base_url].status == "ok" and reports[ups[0].base_url].usable
        # The choice itself is unchanged: fewest outstanding from this process.
        assert {e.base_url for e in p.health.order()} == {u.base_url for u in ups}
    finally:
        await p.aclose()


async def test_absent_malformed_and_unreachable_stay_empty_without_log_spam(
    ups: list[Upstream], client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    ups[0].metrics_text = None  # a server with no /metrics: 404
    ups[1].metrics_text = vllm_metrics.MALFORMED
    dead = f"http://127.0.0.1:{free_port()}/v1"
    p = pool([ups[0].base_url, ups[1].base_url, dead], client)
    caplog.set_level(logging.DEBUG, logger="routegate.vllm")
    await p.start()
    try:
        await asyncio.sleep(0.5)  # ten intervals
        reports = {r.endpoint: r for r in p.endpoint_reports()}
        assert reports[ups[0].base_url].status == "absent"
        assert reports[ups[1].base_url].status == "malformed"
        assert reports[dead].status == "unreachable"
        assert all(r.engine.empty for r in reports.values())
        # Absent and malformed pages are asked once, then only every ABSENT_RETRY_S (60 s).
        assert (ups[0].metrics_hits, ups[1].metrics_hits) == (1, 1)
        lines = [r for r in caplog.records if "/metrics" in r.getMessage()]
        assert len(lines) == 3  # one per endpoint, on the change of status
        assert p.healthy()  # the health check does not care about /metrics
    finally:
        await p.aclose()


async def test_a_server_that_stops_answering_loses_its_figures(
    ups: list[Upstream], client: httpx.AsyncClient
) -> None:
    ups[0].metrics_text = vllm_metrics.new_names(1, 0, 0.1, 0, 0)
    p = pool([ups[0].base_url], client)
    await p.start()
    try:
        assert not p.engine_states()[ups[0].base_url].empty
        ups[0].stop()
        await _until(lambda: p.engine_states()[ups[0].base_url].empty)
        assert p.endpoint_reports()[0].status == "unreachable"
    finally:
        await p.aclose()


# -- on the gateway's /metrics and dashboard ---------------------------------------------------

GATEWAY_POLICY = """
version: 1
defaults: {{metrics_interval_s: 0.05, health_interval_s: 60}}
models:
  local:
    provider: vllm
    endpoints: [{a}, {b}]
    pricing: {{input_per_1m: 1.0, output_per_1m: 2.0}}
routes:
  cheap: {{models: [local]}}
"""


async def test_gauges_on_metrics_and_the_dashboard_table(
    ups: list[Upstream], client: httpx.AsyncClient, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.delenv("ROUTEGATE_MASTER_KEY", raising=False)  # an open dashboard and /metrics
    ups[0].metrics_text = vllm_metrics.new_names(3, 4, 0.5, 30, 40)
    ups[1].metrics_text = None  # no /metrics: no gauge, an empty row

    def real_pools(name: str, config: Any) -> VllmPool:
        return VllmPool(name, config, client, health_interval_s=60, metrics_interval_s=0.05)

    policy = GATEWAY_POLICY.format(a=ups[0].base_url, b=ups[1].base_url)
    async with in_process_gateway(policy, tmp_path, backend_factory=real_pools) as gw:
        assert (await gw.chat("cheap")).status_code == 200
        text = (await gw.client.get("/metrics")).text
        families = {f.name: f for f in text_string_to_metric_families(text)}
        a = {"model": "local", "endpoint": ups[0].base_url}

        def value(family: str) -> list[float]:
            return [s.value for s in families[family].samples if s.labels == a]

        assert value("routegate_endpoint_requests_running") == [3]
        assert value("routegate_endpoint_requests_waiting") == [4]
        assert value("routegate_endpoint_kv_cache_usage") == [0.5]
        assert value("routegate_endpoint_prefix_cache_hit_rate") == [0.75]
        for family in families.values():
            if family.name.startswith("routegate_endpoint_"):
                assert all(s.labels["endpoint"] != ups[1].base_url for s in family.samples)

        feed = (await gw.client.get("/dashboard/data.json")).json()
        rows = {e["endpoint"]: e for e in feed["endpoints"]}
        assert rows[ups[0].base_url] == {
            "model": "local", "endpoint": ups[0].base_url, "usable": True, "outstanding": 0,
            "metrics": "ok", "running": 3, "waiting": 4, "kv_cache_usage": 0.5,
            "prefix_cache_hit_rate": 0.75, "read_at": rows[ups[0].base_url]["read_at"],
        }  # fmt: skip
        assert rows[ups[1].base_url]["metrics"] == "absent"
        assert rows[ups[1].base_url]["running"] is None
        page = (await gw.client.get("/dashboard")).text
        assert 'id="endpoints-table"' in page and "absent" in page

        # Figures that go away (the server stops answering) leave no stale gauge behind.
        ups[0].stop()
        await _until(
            lambda: gw.holder.current.backends["local"].engine_states()[ups[0].base_url].empty
        )
        text = (await gw.client.get("/metrics")).text
        assert "routegate_endpoint_requests_running{" not in text


def test_gauges_of_an_endpoint_gone_are_removed_or_nan_with_workers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def running(metrics: Metrics) -> list[float]:
        return [
            s.value
            for f in metrics.registry.collect()
            if f.name == "routegate_endpoint_requests_running"
            for s in f.samples
        ]

    figures = EngineState(running=2, waiting=0, kv_usage=0.1, prefix_hit_rate=0.5, read_at=1.0)
    one = Metrics()
    one.set_endpoints([("m", "http://a/v1", figures)])
    assert running(one) == [2]
    one.set_endpoints([("m", "http://a/v1", EngineState())])  # unknown now: no sample
    assert running(one) == []
    # --workers: a value once written stays in the worker's file, so it is set to NaN.
    monkeypatch.setenv(MULTIPROC_DIR_ENV, str(tmp_path))
    workers = Metrics()
    workers.set_endpoints([("m", "http://a/v1", figures)])
    workers.set_endpoints([])
    assert [math.isnan(v) for v in running(workers)] == [True]
