"""Policy across replicas, for real: three `routegate serve` processes share one redis-server.
A policy applied on one replica's policy page (`POST /dashboard/policy/apply`) is served by all
three within 5 s (their /readyz); a version that one replica cannot load (a learned router whose
directory exists only beside the other replicas' policy files) is reported in the store and that
replica keeps its old version; `routegate policy apply` publishes from the command line; a
replica started later serves the latest version. In-process: tests/unit/test_policy_follow.py."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from gateway.runtime import policy_version
from tests.support.gateway import GatewayProcess
from tests.support.upstream import Upstream
from tests.unit.test_learned_route_validate import ARTIFACT, STRONG, WEAK

MASTER = "master-fleet-key"
AUTH = {"authorization": f"Bearer {MASTER}"}
SPREAD_S = 5.0  # the promise: every replica serves a new version within this long

POLICY = """version: 1
state: {{url: "{redis}", prefix: "{prefix}"}}
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
  main: {{models: [alpha]}}
"""
LEARNED = f"""
  auto:
    kind: learned
    router: router
    models: [alpha, beta]
    model_map: {{alpha: "{WEAK}", beta: "{STRONG}"}}
    lambda: 1
"""


@dataclass(slots=True)
class Fleet:
    base: str  # the policy every replica's file holds
    replicas: dict[str, GatewayProcess]
    root: Path
    redis_url: str
    prefix: str

    def start(self, name: str, with_router: bool = True) -> GatewayProcess:
        folder = self.root / name
        folder.mkdir()
        (folder / "policy.yaml").write_text(self.base)
        if with_router:  # the learned route's relative `router: router` resolves here
            (folder / "router").symlink_to(ARTIFACT)
        env = {"ROUTEGATE_MASTER_KEY": MASTER, "ROUTEGATE_REPLICA": name}
        gw = GatewayProcess(folder / "policy.yaml", folder, env=env).start(timeout=120)
        self.replicas[name] = gw
        return gw


@pytest.fixture(scope="module")
def fleet(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    a, b = Upstream("alpha").start(), Upstream("beta").start()
    prefix = f"fleet-{uuid.uuid4().hex[:8]}"
    base = POLICY.format(redis=redis_url, prefix=prefix, a=a.base_url, b=b.base_url)
    fleet = Fleet(base, {}, tmp_path_factory.mktemp("fleet"), redis_url, prefix)
    try:
        fleet.start("a")
        fleet.start("b")
        fleet.start("c", with_router=False)
        yield fleet
    finally:
        for gw in fleet.replicas.values():
            gw.stop()
        a.stop()
        b.stop()


def ready(gw: GatewayProcess) -> dict[str, Any]:
    return httpx.get(gw.url + "/readyz", headers=AUTH, timeout=5).json()


def wait_for(gw: GatewayProcess, policy_id: int, timeout: float = 10) -> float:
    """Seconds until `gw`'s /readyz says it serves published version `policy_id`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if ready(gw)["policy_id"] == policy_id:
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"{gw.url} still serves {ready(gw)}, not v{policy_id}")


def apply(gw: GatewayProcess, text: str, who: str) -> httpx.Response:
    return httpx.post(
        gw.url + "/dashboard/policy/apply", json={"text": text, "who": who}, headers=AUTH,
        timeout=60,
    )  # fmt: skip


def served_by(gw: GatewayProcess, route: str) -> str:
    body = {"model": route, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    resp = httpx.post(gw.url + "/v1/chat/completions", json=body, headers=AUTH, timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.headers["x-routegate-model"]


def test_an_applied_policy_is_served_by_every_replica_within_5_s(fleet: Fleet) -> None:
    a, b, c = (fleet.replicas[n] for n in "abc")
    assert {ready(gw)["policy_source"] for gw in (a, b, c)} in ({"file"}, {"shared"})
    edited = fleet.base.replace("main: {models: [alpha]}", "main: {models: [beta]}")
    started = time.monotonic()
    resp = apply(a, edited, "ana")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert (
        body["ok"]
        and body["policy_source"] == "shared"
        and body["version"] == policy_version(edited)
    )
    policy_id = body["policy_id"]
    took = {name: wait_for(gw, policy_id) for name, gw in fleet.replicas.items()}
    spread = time.monotonic() - started
    print(f"\napplied v{policy_id} on a; served by all three {spread:.2f} s after the POST "
          f"(per replica after the answer: {', '.join(f'{k} {v:.2f} s' for k, v in took.items())})")  # fmt: skip
    assert spread < SPREAD_S
    for gw in (a, b, c):
        status = ready(gw)
        assert status["policy_version"] == policy_version(edited)
        assert status["policy_source"] == "shared" and status["last_reload_error"] is None
        assert served_by(gw, "main") == "beta"
    fleet_view = httpx.get(a.url + "/dashboard/policy/replicas.json", headers=AUTH).json()
    assert {r["replica"]: (r["ok"], r["serving_id"]) for r in fleet_view["reports"]} == {
        "a": (True, policy_id), "b": (True, policy_id), "c": (True, policy_id),
    }  # fmt: skip
    assert fleet_view["latest"]["id"] == policy_id and fleet_view["latest"]["author"] == "ana"


def test_a_version_one_replica_rejects_is_reported_and_it_keeps_its_own(fleet: Fleet) -> None:
    a, b, c = (fleet.replicas[n] for n in "abc")
    before = ready(c)
    learned = fleet.base + LEARNED
    resp = apply(a, learned, "ben")
    assert resp.status_code == 200, resp.text
    policy_id = resp.json()["policy_id"]
    wait_for(b, policy_id, timeout=60)  # loading the learned router takes a few seconds
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        view = httpx.get(
            b.url + "/dashboard/policy/replicas.json", params={"id": policy_id}, headers=AUTH
        ).json()
        outcome = {r["replica"]: r for r in view["reports"]}
        if "c" in outcome:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"replica c never reported v{policy_id}: {view}")
    assert outcome["a"]["ok"] and outcome["b"]["ok"]
    rejected = outcome["c"]
    assert not rejected["ok"] and "routes.auto" in rejected["error"]
    assert rejected["serving_id"] == before["policy_id"]
    assert rejected["serving_version"] == before["policy_version"]
    now = ready(c)  # not half-applied: c serves what it served, and says why
    assert (now["policy_id"], now["policy_version"]) == (
        before["policy_id"],
        before["policy_version"],
    )
    assert "routes.auto" in now["last_reload_error"]
    assert served_by(c, "main") == "beta"
    assert served_by(a, "auto") in ("alpha", "beta")
    page = httpx.get(a.url + "/dashboard/policy", headers=AUTH).text
    assert 'data-replica="c"' in page and "rejected" in page


def test_the_cli_publishes_and_a_later_replica_serves_the_latest(fleet: Fleet) -> None:
    cli_policy = fleet.root / "cli-policy.yaml"
    text = fleet.base.replace("main: {models: [alpha]}", "main: {models: [alpha, beta]}")
    cli_policy.write_text(text)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "policy", "apply", str(cli_policy),
         "--author", "cli-user", "--note", "from the CLI", "--wait", "10"],
        capture_output=True, text=True, timeout=60, env={**os.environ},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    first = done.stdout.splitlines()[0]
    assert first.startswith("published v") and policy_version(text) in first
    policy_id = int(first.split()[1][1:])
    for name in "abc":
        assert f"  {name}: loaded" in done.stdout, done.stdout
    for gw in fleet.replicas.values():
        wait_for(gw, policy_id)
    print(
        f"\nCLI apply v{policy_id}: all three serve it {time.monotonic() - started:.2f} s after the CLI started"
    )
    late = fleet.start("d", with_router=False)
    status = ready(late)
    assert (status["policy_id"], status["policy_source"]) == (policy_id, "shared")
    assert status["policy_version"] == policy_version(text) and status["replica"] == "d"


def test_a_store_that_lost_its_policies_is_followed_again(fleet: Fleet) -> None:
    """A Redis restart without persistence: numbering starts again at v1, and every replica
    follows the new v1 although it once served a higher number."""
    raw = redis.Redis.from_url(fleet.redis_url)
    try:
        gone = [k for k in raw.scan_iter(f"{fleet.prefix}:policy:*")]
        assert gone and raw.delete(*gone) == len(gone)
    finally:
        raw.close()
    time.sleep(2.5)  # the replicas notice the count went back
    text = fleet.base.replace("main: {models: [alpha]}", "main: {models: [beta, alpha]}")
    resp = apply(fleet.replicas["b"], text, "after-restart")
    assert resp.status_code == 200, resp.text
    assert resp.json()["policy_id"] == 1
    for gw in fleet.replicas.values():
        wait_for(gw, 1)
        assert ready(gw)["policy_version"] == policy_version(text)
