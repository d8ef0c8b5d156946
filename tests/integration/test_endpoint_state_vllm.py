"""A real vLLM server's own load, read by the gateway from its /metrics: what this vLLM calls
its figures, the gauges on the gateway's /metrics and the dashboard's endpoints table, with
a request in flight and after a prompt sent twice (its prefix is then a cache hit)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.backends.vllm_pool.engine_state import parse_engine_state
from tests.support.gateway import GatewayProcess

pytestmark = pytest.mark.integration

MASTER = "mk-endpoint-state"
AUTH = {"authorization": f"Bearer {MASTER}"}
POLICY = """
version: 1
defaults: {{timeout_s: 60, retries: 0, metrics_interval_s: 0.1, health_interval_s: 1}}
models:
  tiny-small:
    provider: vllm
    endpoints: [{small}]
    pricing: {{input_per_1m: 0.10, output_per_1m: 0.20}}
routes:
  cheap: {{models: [tiny-small]}}
"""
# Several KV blocks long (vLLM caches whole blocks of 16 tokens), well under max-model-len.
LONG = "The router keeps a prefix cache warm for the conversation. " * 24


@pytest.fixture(scope="module")
def gateway(
    vllm_servers: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GatewayProcess, str]]:
    work = tmp_path_factory.mktemp("gateway-endpoint-state")
    policy = work / "policy.yaml"
    small = vllm_servers["tiny-small"]
    policy.write_text(POLICY.format(small=small))
    gw = GatewayProcess(policy, work, env={"ROUTEGATE_MASTER_KEY": MASTER}).start()
    yield gw, small
    gw.stop()


def _row(gw: GatewayProcess, endpoint: str) -> dict[str, Any]:
    feed = httpx.get(gw.url + "/dashboard/data.json", headers=AUTH, timeout=10).json()
    return next(e for e in feed["endpoints"] if e["endpoint"] == endpoint)


def _wait_row(
    gw: GatewayProcess, endpoint: str, ready: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """The endpoint's dashboard row, once `ready` says so (reads every 0.1 s)."""
    deadline = time.time() + 30
    while time.time() < deadline:
        row = _row(gw, endpoint)
        if ready(row):
            return row
        time.sleep(0.05)
    raise AssertionError(f"timed out; last row: {row}")


def test_this_vllm_names_its_figures_as_the_parser_expects(
    gateway: tuple[GatewayProcess, str],
) -> None:
    _, small = gateway
    page = httpx.get(small.removesuffix("/v1") + "/metrics", timeout=10).text
    state = parse_engine_state(page, time.time())
    assert state.names == (
        "vllm:kv_cache_usage_perc",
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:prefix_cache_hits",
        "vllm:prefix_cache_queries",
    )


def test_a_request_in_flight_and_a_repeated_prefix_show(
    gateway: tuple[GatewayProcess, str],
) -> None:
    gw, small = gateway
    row = _wait_row(gw, small, lambda r: r["metrics"] == "ok")
    assert row["running"] is not None and row["waiting"] is not None
    assert 0 <= row["kv_cache_usage"] <= 1

    # A long generation (~4 s of decoding here) runs while the table is read.
    def long_call() -> None:
        answers.append(httpx.post(
            gw.url + "/v1/chat/completions",
            json={"model": "cheap", "messages": [{"role": "user", "content": "go"}],
                  "max_tokens": 900, "ignore_eos": True},
            headers=AUTH,
            timeout=120,
        ).status_code)  # fmt: skip

    answers: list[int] = []
    worker = threading.Thread(target=long_call)
    worker.start()
    busy = _wait_row(gw, small, lambda r: bool(r["running"]))
    assert busy["running"] >= 1 and busy["outstanding"] >= 1
    assert 0 < busy["kv_cache_usage"] <= 1  # the running request holds KV blocks
    worker.join(timeout=120)
    assert answers == [200]

    # The same long prompt twice: the second is mostly served from the prefix cache.
    for _ in range(2):
        done = httpx.post(
            gw.url + "/v1/chat/completions",
            json={"model": "cheap", "messages": [{"role": "user", "content": LONG}],
                  "max_tokens": 4},
            headers=AUTH,
            timeout=60,
        )  # fmt: skip
        assert done.status_code == 200
    after = _wait_row(gw, small, lambda r: bool(r["prefix_cache_hit_rate"]) and r["running"] == 0)
    assert 0 < after["prefix_cache_hit_rate"] < 1

    text = httpx.get(gw.url + "/metrics", headers=AUTH, timeout=10).text
    labels = {"model": "tiny-small", "endpoint": small}
    got = {
        s.name: s.value
        for f in text_string_to_metric_families(text)
        if f.name.startswith("routegate_endpoint_")
        for s in f.samples
        if s.labels == labels
    }
    assert set(got) == {
        "routegate_endpoint_requests_running",
        "routegate_endpoint_requests_waiting",
        "routegate_endpoint_kv_cache_usage",
        "routegate_endpoint_prefix_cache_hit_rate",
    }
    assert 0 < got["routegate_endpoint_prefix_cache_hit_rate"] < 1
