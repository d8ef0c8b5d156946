"""Hostile policy text through the real processes: `python -m gateway.cli policy validate` and
POST /dashboard/policy/validate of `routegate serve` answer with FILE:LINE:COL problems for
anything (invalid UTF-8, deep nesting, alias bombs, huge files), never a traceback or a 500, and
validation never stalls the event loop. The in-process mutation fuzz:
tests/system/test_policy_validate_fuzz.py."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.gateway import GatewayProcess
from tests.support.upstream import Upstream
from tests.system.test_policy_validate_fuzz import alias_bomb

REPO = Path(__file__).resolve().parents[2]


def run_cli(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "policy", "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


def test_invalid_utf8_names_the_byte(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_bytes(b"version: 1\nmodels:\n  a\xff: {}\n")
    done = run_cli(path)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stdout.strip() == f"{path}:3:4 (file): not UTF-8 at byte 22"


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("version: 1\nmodels: " + "[" * 10000, 2),
        ("version: 1\nmodels:\n  " + "- " * 5000 + "x\n", 3),
        ("version: 1\nmodels: " + "{a: " * 3000, 2),
    ],
    ids=["flow-seq", "block-seq", "flow-map"],
)
def test_deep_nesting_is_a_problem_with_a_position(tmp_path: Path, text: str, line: int) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    t0 = time.perf_counter()
    done = run_cli(path)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1 and re.match(rf"^{re.escape(str(path))}:{line}:\d+ \(yaml\): ", lines[0])
    assert "nest" in lines[0]
    assert time.perf_counter() - t0 < 20


def test_a_huge_policy_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("version: 1\n" + "# padding\n" * 200_000)
    done = run_cli(path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stdout.startswith(f"{path}:1:1 (file): ") and "larger than" in done.stdout


# -- the dashboard's validate endpoint -------------------------------------------------------

POLICY = """version: 1
models:
  alpha:
    provider: vllm
    endpoints: [{a}]
    pricing: {{input_per_1m: 1.0, output_per_1m: 2.0}}
routes:
  cheap: {{models: [alpha]}}
"""


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    up = Upstream("alpha").start()
    yield up
    up.stop()


@pytest.fixture(scope="module")
def gateway(
    upstream: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    work = tmp_path_factory.mktemp("gw")
    policy = work / "policy.yaml"
    policy.write_text(POLICY.format(a=upstream.base_url))
    # An open gateway (no master key, no keys): the dashboard needs no credentials, as an
    # attacker on an open gateway would find it.
    gw = GatewayProcess(policy, work).start()
    yield gw
    gw.stop()


def healthz_latency_during(
    gw: GatewayProcess, send: Callable[[], httpx.Response]
) -> tuple[httpx.Response, float]:
    """`send()`'s answer, and the slowest /healthz seen while it ran."""
    worst = 0.0
    done = threading.Event()

    def probe() -> None:
        nonlocal worst
        with httpx.Client(timeout=30) as c:
            while not done.is_set():
                t0 = time.perf_counter()
                c.get(gw.url + "/healthz")
                worst = max(worst, time.perf_counter() - t0)
                time.sleep(0.02)

    thread = threading.Thread(target=probe)
    thread.start()
    try:
        resp = send()
    finally:
        done.set()
        thread.join()
    return resp, worst


@pytest.mark.parametrize(
    "text",
    ["version: 1\nmodels: " + "[" * 10000, "version: 1\nmodels: " + "{a: " * 4000],
    ids=["flow-seq", "flow-map"],
)
def test_deeply_nested_text_is_a_400_with_the_problem_and_the_loop_keeps_serving(
    gateway: GatewayProcess, text: str
) -> None:
    def send() -> httpx.Response:
        return httpx.post(
            gateway.url + "/dashboard/policy/validate", json={"text": text}, timeout=60
        )

    resp, worst = healthz_latency_during(gateway, send)
    assert resp.status_code == 400, resp.text
    data = resp.json()
    assert data["ok"] is False
    assert data["error"]["type"] == "invalid_request_error" and data["error"]["param"] == "text"
    (problem,) = data["problems"]
    assert problem["line"] == 2 and problem["field"] == "(yaml)" and "nest" in problem["message"]
    assert worst < 0.5, f"the event loop stalled {worst:.2f} s"


def test_oversized_and_alias_bomb_texts_are_400(gateway: GatewayProcess) -> None:
    url = gateway.url + "/dashboard/policy/validate"
    huge = "version: 1\n" + "# padding\n" * 60_000  # 600 KB: over the policy size limit
    resp = httpx.post(url, json={"text": huge}, timeout=60)
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "text"
    assert "larger than" in resp.json()["problems"][0]["message"]
    bomb = POLICY.format(a="http://127.0.0.1:1/v1") + alias_bomb().decode()
    resp = httpx.post(url, json={"text": bomb}, timeout=60)
    assert resp.status_code == 400, resp.text
    assert "alias" in resp.json()["problems"][0]["message"]


def test_an_ordinary_invalid_policy_still_lists_its_problems(gateway: GatewayProcess) -> None:
    resp = httpx.post(
        gateway.url + "/dashboard/policy/validate", json={"text": "version: 1\nmodels: 3\n"}
    )
    assert resp.status_code == 200
    data = resp.json()
    assert data["ok"] is False and data["problems"][0]["field"] == "models"
