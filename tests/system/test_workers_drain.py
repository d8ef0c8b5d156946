"""`routegate serve --workers N` and the SIGTERM drain, on real processes: the gateway, a real
redis-server and a test upstream whose streams drip (tests/support/upstream.py)."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from gateway.accounting.log_store import open_reader
from gateway.accounting.request_log import read_records
from gateway.admission.periods import window_id
from gateway.state import open_state
from tests.support import vllm_metrics
from tests.support.gateway import GatewayProcess
from tests.support.upstream import Upstream

MASTER = "master-drain-key"
MESSAGES = [{"role": "user", "content": "hello"}]
POLICY = """
version: 1
state: {{url: "{state}", prefix: "{prefix}"}}
defaults: {{timeout_s: 30, reservation_ttl_s: 120}}
models:
  fast:
    provider: vllm
    endpoints: [{up}]
    pricing: {{input_per_1m: 1.0, output_per_1m: 2.0}}
routes:
  cheap: {{models: [fast]}}
"""


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    up = Upstream("u").start()
    yield up
    up.stop()


def write_policy(path: Path, state: str, upstream: Upstream) -> str:
    prefix = f"drain{time.time_ns()}"
    path.write_text(POLICY.format(state=state, prefix=prefix, up=upstream.base_url))
    return prefix


def workers_started(gw: GatewayProcess, n: int, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while gw.output().count("Application startup complete") < n:
        assert time.time() < deadline, gw.output()
        time.sleep(0.1)


def metric_values(text: str, name: str) -> dict[str, float]:
    """{labels: value} of one metric in a Prometheus text page."""
    out = {}
    for line in text.splitlines():
        if m := re.match(rf"{name}(\{{[^}}]*\}})? (\S+)$", line):
            out[m.group(1) or ""] = float(m.group(2))
    return out


def test_two_workers_serve_one_port_with_shared_metrics_and_log(
    upstream: Upstream, redis_url: str, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    write_policy(policy, redis_url, upstream)
    upstream.metrics_text = vllm_metrics.new_names(3, 1, 0.25, 30, 40)  # its own load page
    gw = GatewayProcess(policy, tmp_path, args=["--workers", "2"]).start()
    try:
        workers_started(gw, 2)
        sent = 0

        def one(_: int) -> int:  # a new connection each: the kernel picks the worker
            body = {"model": "cheap", "messages": MESSAGES}
            return httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=30).status_code

        with ThreadPoolExecutor(4) as pool:
            # Batches until both workers have answered some (which one accepts is the kernel's).
            while sent < 400:
                assert list(pool.map(one, range(40))) == [200] * 40
                sent += 40
                by_pid = metric_values(
                    httpx.get(gw.url + "/metrics").text, "routegate_worker_requests_total"
                )
                if len(by_pid) == 2:
                    break
        for _ in range(4):  # whichever worker answers the scrape: the totals of both
            text = httpx.get(gw.url + "/metrics").text
            by_pid = metric_values(text, "routegate_worker_requests_total")
            assert len(by_pid) == 2, by_pid  # both worker processes answered requests
            assert all(v > 0 for v in by_pid.values()) and sum(by_pid.values()) == sent
            total = metric_values(text, "routegate_requests_total")
            assert total == {'{model="fast",route="cheap",status="200"}': sent}
            assert metric_values(text, "routegate_backend_healthy") == {'{model="fast"}': 1.0}
            # The endpoint's load, as each worker read it from its /metrics: one series.
            labels = f'{{endpoint="{upstream.base_url}",model="fast"}}'
            running = metric_values(text, "routegate_endpoint_requests_running")
            assert running == {labels: 3.0}, running
        # Each worker serves with the header-guarded protocol (gateway/http_server.py).
        flood = {f"x-h{i}": "v" for i in range(120)}
        for _ in range(4):
            resp = httpx.get(gw.url + "/healthz", headers=flood)
            assert (resp.status_code, resp.json()["error"]["code"]) == (431, "too_many_headers")
        # SIGTERM to the supervisor: every worker drains; a stream in flight runs to its end.
        upstream.mode, upstream.drip_chunks, upstream.drip_interval_s = "drip", 20, 0.05
        with httpx.stream(
            "POST",
            gw.url + "/v1/chat/completions",
            json={"model": "cheap", "messages": MESSAGES, "stream": True},
            timeout=30,
        ) as resp:
            lines = resp.iter_lines()
            assert next(line for line in lines if line.startswith("data: ")).startswith("data: {")
            started = time.monotonic()
            gw.signal(signal.SIGTERM)
            assert [line for line in lines if line][-1] == "data: [DONE]"
        assert gw.proc is not None and gw.proc.wait(timeout=20) == 0, gw.output()
        assert time.monotonic() - started < 10
        assert "Traceback" not in gw.output()
        rows = read_records(gw.log_path)
        assert len(rows) == sent + 1 and len({r["request_id"] for r in rows}) == sent + 1
        assert all(r["status"] == 200 for r in rows)
        assert max(rows, key=lambda r: r["ts"])["completion_tokens"] == 20
    finally:
        gw.stop()


def test_two_workers_share_a_postgres_log_each_with_its_own_spool(
    upstream: Upstream, redis_url: str, postgres_url: str, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    write_policy(policy, redis_url, upstream)
    args = ["--workers", "2", "--log-spool", str(tmp_path / "spool.jsonl"), "--replica", "r1"]
    gw = GatewayProcess(policy, tmp_path, log=postgres_url, args=args).start()
    try:
        workers_started(gw, 2)
        body = {"model": "cheap", "messages": MESSAGES}
        with ThreadPoolExecutor(4) as pool:
            sent = list(
                pool.map(
                    lambda _: httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=30),
                    range(40),
                )
            )
        assert [r.status_code for r in sent] == [200] * 40
        gw.signal(signal.SIGTERM)  # the drain flushes both workers' writers
        assert gw.proc is not None and gw.proc.wait(timeout=20) == 0, gw.output()
    finally:
        gw.stop()
    rows = [row for batch in open_reader(postgres_url).batches() for row in batch]
    assert sorted(r["request_id"] for r in rows) == sorted(
        r.headers["x-routegate-request-id"] for r in sent
    )
    assert {r["replica"] for r in rows} == {"r1"}  # one replica, however many workers
    # Each worker has a spool file of its own, empty (Postgres stayed up).
    spools = sorted(tmp_path.glob("spool*"))
    assert [p.name for p in spools] == ["spool-w0.jsonl", "spool-w1.jsonl"]
    assert all(p.stat().st_size == 0 for p in spools)


def test_two_workers_on_the_memory_store_are_refused(upstream: Upstream, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    write_policy(policy, "memory", upstream)
    cmd = [sys.executable, "-m", "gateway.cli", "serve", "--policy", str(policy), "--workers", "2"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.startswith(f"{policy}:3:9 state.url: --workers 2 needs a shared state store")
    assert "spend could exceed a budget 2-fold" in done.stderr
    assert "state.url: redis://" in done.stderr
    assert "Traceback" not in done.stderr


def start_drainer(
    upstream: Upstream, redis_url: str, tmp_path: Path, *args: str
) -> tuple[GatewayProcess, str, str, str]:
    """A gateway with a budgeted key; (gateway, key id, secret, state prefix)."""
    policy = tmp_path / "policy.yaml"
    prefix = write_policy(policy, redis_url, upstream)
    gw = GatewayProcess(policy, tmp_path, env={"ROUTEGATE_MASTER_KEY": MASTER}, args=list(args))
    gw.start()
    resp = httpx.post(
        gw.url + "/admin/keys",
        json={"team": "t", "budget_usd": 5, "period": "day"},
        headers={"authorization": f"Bearer {MASTER}"},
    )
    assert resp.status_code == 201, resp.text
    return gw, resp.json()["id"], resp.json()["secret"], prefix


def budget_after(redis_url: str, prefix: str, key_id: str) -> tuple[float, float]:
    """(spent, reserved) of the key's budget, read from redis after the gateway is gone."""

    async def read() -> tuple[float, float]:
        state = await open_state(redis_url, prefix=prefix)
        try:
            now = time.time()
            return await state.budget_usage(f"key:{key_id}:{window_id('day', now)}", now)
        finally:
            await state.aclose()

    return asyncio.run(read())


def stream_request(gw: GatewayProcess, secret: str) -> httpx.Response:
    client = httpx.Client(timeout=60)
    body = {"model": "cheap", "messages": MESSAGES, "stream": True}
    req = client.build_request(
        "POST",
        gw.url + "/v1/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {secret}"},
    )
    return client.send(req, stream=True)


def test_sigterm_lets_a_stream_finish_within_the_drain_timeout(
    upstream: Upstream, redis_url: str, tmp_path: Path
) -> None:
    upstream.mode, upstream.drip_chunks, upstream.drip_interval_s = "drip", 40, 0.1  # ~4 s
    gw, key_id, secret, prefix = start_drainer(
        upstream, redis_url, tmp_path, "--drain-grace", "3", "--drain-timeout", "10"
    )
    try:
        resp = stream_request(gw, secret)
        assert resp.status_code == 200
        request_id = resp.headers["x-routegate-request-id"]
        lines = resp.iter_lines()
        assert next(line for line in lines if line.startswith("data: ")).startswith("data: {")
        signalled = time.monotonic()
        gw.signal(signal.SIGTERM)
        time.sleep(0.3)
        # In the grace: still accepting, and telling load balancers to stop sending.
        ready = httpx.get(gw.url + "/readyz", timeout=5)
        assert (ready.status_code, ready.json()["status"]) == (503, "draining")
        late = httpx.post(
            gw.url + "/v1/chat/completions",
            json={"model": "cheap", "messages": MESSAGES},
            headers={"authorization": f"Bearer {secret}"},
            timeout=10,
        )
        assert late.status_code == 200  # what a load balancer still sends is served
        rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]"
        assert any(line.startswith(": x-routegate-cost-usd=") for line in rest)
        assert gw.proc is not None and gw.proc.wait(timeout=20) == 0, gw.output()
        assert time.monotonic() - signalled < 10
        assert "Traceback" not in gw.output()
    finally:
        gw.stop()
    rows = {r["request_id"]: r for r in read_records(gw.log_path)}
    row = rows[request_id]
    assert (row["status"], row["error"], row["completion_tokens"]) == (200, None, 40)
    assert rows[late.headers["x-routegate-request-id"]]["status"] == 200
    spent, reserved = budget_after(redis_url, prefix, key_id)
    assert spent == pytest.approx(sum(r["cost_usd"] for r in rows.values())) and reserved == 0


def test_a_stream_longer_than_the_drain_timeout_is_cut_logged_and_charged(
    upstream: Upstream, redis_url: str, tmp_path: Path
) -> None:
    upstream.mode, upstream.drip_chunks, upstream.drip_interval_s = "drip", 400, 0.05  # ~20 s
    gw, key_id, secret, prefix = start_drainer(
        upstream, redis_url, tmp_path, "--drain-timeout", "1.5"
    )
    try:
        resp = stream_request(gw, secret)
        request_id = resp.headers["x-routegate-request-id"]
        lines = resp.iter_lines()
        assert next(line for line in lines if line.startswith("data: ")).startswith("data: {")
        signalled = time.monotonic()
        gw.signal(signal.SIGTERM)
        rest = [line for line in lines if line]  # it ends at the drain deadline, in-band
        cut_after = time.monotonic() - signalled
        assert 1.3 < cut_after < 4, cut_after
        errors = [line for line in rest if '"error"' in line]
        assert errors and '"code":"drained"' in errors[-1], rest[-4:]
        assert any(line.startswith(": x-routegate-cost-usd=") for line in rest)
        assert gw.proc is not None and gw.proc.wait(timeout=10) == 0, gw.output()
        assert time.monotonic() - signalled < 1.5 + 1 + 3  # timeout + settle + margin
        assert "cutting 1 request(s)" in gw.output() and "Traceback" not in gw.output()
    finally:
        gw.stop()
    (row,) = [r for r in read_records(gw.log_path) if r["request_id"] == request_id]
    assert row["status"] == 503 and row["error"].startswith("503 drained:")
    assert 1 <= row["completion_tokens"] < 400 and row["cost_usd"] > 0
    spent, reserved = budget_after(redis_url, prefix, key_id)
    assert spent == pytest.approx(row["cost_usd"]) and reserved == 0


def test_a_request_still_waiting_at_the_drain_timeout_is_answered_503_drained(
    upstream: Upstream, redis_url: str, tmp_path: Path
) -> None:
    upstream.mode, upstream.delay_s = "slow", 20  # answers long after the drain is over
    gw, key_id, secret, prefix = start_drainer(
        upstream, redis_url, tmp_path, "--drain-timeout", "1.5"
    )
    try:
        with ThreadPoolExecutor(1) as pool:
            answer = pool.submit(
                httpx.post,
                gw.url + "/v1/chat/completions",
                json={"model": "cheap", "messages": MESSAGES},
                headers={"authorization": f"Bearer {secret}"},
                timeout=30,
            )
            deadline = time.time() + 10
            while upstream.hits == 0:  # the request is at the upstream
                assert time.time() < deadline
                time.sleep(0.05)
            signalled = time.monotonic()
            gw.signal(signal.SIGTERM)
            resp = answer.result()
        assert 1.3 < time.monotonic() - signalled < 4
        assert resp.status_code == 503 and resp.json()["error"]["code"] == "drained"
        request_id = resp.headers["x-routegate-request-id"]
        assert gw.proc is not None and gw.proc.wait(timeout=10) == 0, gw.output()
        assert "Traceback" not in gw.output()
    finally:
        gw.stop()
    (row,) = [r for r in read_records(gw.log_path) if r["request_id"] == request_id]
    assert row["status"] == 503 and row["error"].startswith("503 drained:")
    assert row["cost_usd"] == 0  # nothing came back to charge
    assert budget_after(redis_url, prefix, key_id) == (0, 0)  # the reservation is released
