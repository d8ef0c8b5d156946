"""The report and the dashboard print the same latency percentiles for one request log."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from gateway.accounting.request_log import RequestLog, RequestRecord
from gateway.admission.price_multiplier import Pacers
from gateway.dashboard.data import snapshot
from gateway.percentiles import percentile
from gateway.report.build import build_report
from gateway.runtime import build_runtime
from gateway.state import MemoryState
from policies.loader import parse_policy

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
routes:
  default:
    models: [small, large]
"""


def test_one_percentile_definition() -> None:
    # numpy's linear interpolation between closest ranks, q in percent.
    assert percentile([], 50) is None
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([10.0, 20.0, 30.0, 40.0], 95) == pytest.approx(38.5)


async def test_report_and_dashboard_agree_on_p50_and_p95(tmp_path: Path) -> None:
    path = tmp_path / "requests.sqlite"
    log = RequestLog(path)
    now = time.time()
    # Latencies where nearest rank and interpolation differ (n = 7 and 13).
    for n in range(20):
        model = "small" if n % 3 else "large"
        log.write(
            RequestRecord(
                f"r{n}", now - 600 + n, "chat", False, route="default", model=model,
                prompt_tokens=10, completion_tokens=5, latency_ms=50.0 + 37.0 * (n * 7 % 20),
            )
        )  # fmt: skip
    assert log.flush()
    log.close()

    policy = parse_policy(POLICY)
    report = build_report(path, policy, "policy.yaml", by="model")
    async with httpx.AsyncClient() as client:
        runtime = build_runtime(policy, POLICY, "policy.yaml", client)
        state = MemoryState()
        try:
            shown = await snapshot(path, state, Pacers(state, path), runtime, None, "1h")
        finally:
            await state.aclose()
    traffic = shown["traffic"]
    assert traffic["requests"] == report.total["requests"] == 20
    for q in ("latency_p50_ms", "latency_p95_ms"):
        assert traffic[q] == report.total[q]
        for row in traffic["models"]:
            assert row[q] == report.groups[row["model"]][q]
    # The numbers are the interpolated ones, not a nearest rank.
    latencies = sorted(50.0 + 37.0 * (n * 7 % 20) for n in range(20))
    assert report.total["latency_p95_ms"] == pytest.approx(
        latencies[18] + 0.05 * (latencies[19] - latencies[18])
    )
