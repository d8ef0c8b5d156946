"""The fleet test: three `routegate serve` replicas share one real redis-server (keys, budgets,
the published policy) and one real Postgres (the request log), in front of the fast upstream
in bench/. For FLEET_SECONDS (60) a bounded closed loop of mixed streaming and non-streaming
requests from virtual keys with budgets runs against all three; meanwhile one replica is
killed with SIGKILL (at 1/3 of the run) and restarted (at 1/2), a policy is applied on one
replica, and Postgres is stopped for 1/6 of the run (at 2/3). Afterwards no budget is overrun,
no reservation is left open, every answer a client received is in Postgres exactly once, the
spools were used and are empty, and the report on Postgres equals the priced usage to the cent.

The figures are printed (`pytest -s tests/system/test_fleet.py`); FLEET_SECONDS=20 runs a
shorter timeline.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg

from tests.support.gateway import GatewayProcess
from tests.support.postgres_server import PostgresServer
from tests.support.upstream import free_port

ROOT = Path(__file__).resolve().parents[2]
MASTER = "fleet-master-key"
SECONDS = float(os.environ.get("FLEET_SECONDS", "60"))
USERS = 12  # closed-loop virtual users: the load is bounded by them, not by a rate
IN_PRICE, OUT_PRICE = 100.0, 200.0  # USD per 1M tokens
# bench/fast_upstream.py answers every request with this usage.
PROMPT_TOKENS, COMPLETION_TOKENS = 12, 8
COST = (PROMPT_TOKENS * IN_PRICE + COMPLETION_TOKENS * OUT_PRICE) / 1e6
# Budgets that run out early, mid-run, late and never: refusals happen throughout the run.
BUDGETS = [0.4, 1.5, 4.0, 1000.0]
RESERVATION_TTL_S = 4.0
POLICY_SPREAD_S = 5.0

POLICY = """
version: 1
state: {{url: "{redis}", prefix: "{prefix}"}}
defaults: {{reservation_ttl_s: {ttl}, timeout_s: 10}}
models:
  fast:
    provider: vllm
    endpoints: [{up}]
    pricing: {{input_per_1m: {inp}, output_per_1m: {out}}}
routes:
  chat: {{models: [fast]}}
"""


@dataclass(slots=True)
class Answer:
    replica: str
    key: str
    stream: bool
    status: int
    request_id: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(slots=True)
class Run:
    answers: list[Answer] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)  # what no client received
    policy_spread_s: float | None = None
    policy_versions: dict[str, str] = field(default_factory=dict)


def fast_upstream() -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    cmd = [sys.executable, str(ROOT / "bench/fast_upstream.py"), "--port", str(port)]
    cmd += ["--delay-ms", "5"]  # keep requests in flight while a replica dies
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
            return proc, port
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the fast upstream did not start")


def upstream_served(port: int) -> int:
    return int(httpx.get(f"http://127.0.0.1:{port}/stats", timeout=2).json()["requests"])


def ready(gw: GatewayProcess) -> dict[str, Any]:
    headers = {"authorization": f"Bearer {MASTER}"}
    return httpx.get(gw.url + "/readyz", headers=headers, timeout=2).json()


async def one_request(
    client: httpx.AsyncClient, replica: str, url: str, key: str, secret: str, stream: bool
) -> Answer:
    body: dict[str, Any] = {
        "model": "chat",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 8,
    }
    headers = {"authorization": f"Bearer {secret}"}
    if not stream:
        resp = await client.post(url + "/v1/chat/completions", json=body, headers=headers)
        answer = Answer(replica, key, False, resp.status_code,
                        resp.headers.get("x-routegate-request-id"))  # fmt: skip
        if resp.status_code == 200:
            usage = resp.json()["usage"]
            answer.prompt_tokens = usage["prompt_tokens"]
            answer.completion_tokens = usage["completion_tokens"]
        return answer
    body |= {"stream": True, "stream_options": {"include_usage": True}}
    async with client.stream(
        "POST", url + "/v1/chat/completions", json=body, headers=headers
    ) as resp:
        answer = Answer(replica, key, True, resp.status_code,
                        resp.headers.get("x-routegate-request-id"))  # fmt: skip
        if resp.status_code != 200:
            await resp.aread()
            return answer
        done = False
        async for line in resp.aiter_lines():
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: "):
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    answer.prompt_tokens = chunk["usage"]["prompt_tokens"]
                    answer.completion_tokens = chunk["usage"]["completion_tokens"]
        if not done:  # the stream broke off: the client did not receive an answer
            raise httpx.ReadError("stream ended before [DONE]")
        return answer


class Fleet:
    def __init__(
        self, tmp: Path, redis_url: str, postgres: PostgresServer, log_url: str, up_port: int
    ):
        self.tmp = tmp
        self.postgres = postgres
        self.prefix = f"fleet{time.time_ns()}"
        self.policy_text = POLICY.format(
            redis=redis_url, prefix=self.prefix, ttl=RESERVATION_TTL_S,
            up=f"http://127.0.0.1:{up_port}/v1", inp=IN_PRICE, out=OUT_PRICE,
        )  # fmt: skip
        self.gateways: dict[str, GatewayProcess] = {}
        for name in ("r1", "r2", "r3"):
            work = tmp / name
            work.mkdir()
            policy = work / "policy.yaml"
            policy.write_text(self.policy_text)
            self.gateways[name] = GatewayProcess(
                policy, work, env={"ROUTEGATE_MASTER_KEY": MASTER}, log=log_url,
                # Durable: the replica killed mid-run loses no row of an answer it sent.
                args=["--replica", name, "--log-durable"],
            )  # fmt: skip

    def start(self) -> None:
        for gw in self.gateways.values():
            gw.start()

    def stop(self) -> None:
        for gw in self.gateways.values():
            gw.stop()


async def load(fleet: Fleet, keys: list[tuple[str, str]], until: float, run: Run) -> None:
    names = list(fleet.gateways)
    limits = httpx.Limits(max_connections=USERS * 2)
    async with httpx.AsyncClient(timeout=15, limits=limits) as client:

        async def user(i: int) -> None:
            rng = random.Random(i)
            while time.monotonic() < until:
                replica = names[rng.randrange(len(names))]
                key, secret = keys[rng.randrange(len(keys))]
                url = fleet.gateways[replica].url
                try:
                    answer = await one_request(
                        client, replica, url, key, secret, stream=rng.random() < 0.5
                    )
                except httpx.HTTPError as exc:
                    run.failures[type(exc).__name__] += 1
                    await asyncio.sleep(0.05)  # a dead replica: try another soon
                    continue
                run.answers.append(answer)

        await asyncio.gather(*(user(i) for i in range(USERS)))


async def apply_policy(fleet: Fleet, run: Run) -> None:
    """Applies a new policy version on r1 and times until all three replicas serve it."""
    text = fleet.policy_text.replace("timeout_s: 10", "timeout_s: 11")
    r1 = fleet.gateways["r1"]
    async with httpx.AsyncClient(timeout=10) as client:
        resp = await client.post(
            r1.url + "/dashboard/policy/apply",
            json={"text": text, "who": "fleet-test"},
            headers={"authorization": f"Bearer {MASTER}"},
        )
        assert resp.status_code == 200, resp.text
        t0 = time.monotonic()
        want = resp.json()["version"]
        while time.monotonic() - t0 < 3 * POLICY_SPREAD_S:
            versions = {}
            for name, gw in fleet.gateways.items():
                body = (
                    await client.get(gw.url + "/readyz",
                                     headers={"authorization": f"Bearer {MASTER}"})
                ).json()  # fmt: skip
                versions[name] = body.get("policy_version")
            run.policy_versions = versions
            if all(v == want for v in versions.values()):
                run.policy_spread_s = time.monotonic() - t0
                return
            await asyncio.sleep(0.1)


async def timeline(fleet: Fleet, keys: list[tuple[str, str]], run: Run) -> None:
    start = time.monotonic()
    at = lambda frac: start + frac * SECONDS  # noqa: E731

    async def sleep_until(t: float) -> None:
        await asyncio.sleep(max(0.0, t - time.monotonic()))

    async def events() -> None:
        r3 = fleet.gateways["r3"]
        await sleep_until(at(1 / 3))
        r3.signal(signal.SIGKILL)
        await asyncio.to_thread(r3.wait)
        await sleep_until(at(1 / 2))
        await asyncio.to_thread(r3.start)
        await sleep_until(at(7 / 12))
        await apply_policy(fleet, run)
        await sleep_until(at(2 / 3))
        await asyncio.to_thread(fleet.postgres.stop)
        await sleep_until(at(5 / 6))
        await asyncio.to_thread(fleet.postgres.start)

    await asyncio.gather(load(fleet, keys, at(1), run), events())


def create_keys(gw: GatewayProcess) -> list[tuple[str, str, float]]:
    out = []
    for i, budget in enumerate(BUDGETS):
        resp = httpx.post(
            gw.url + "/admin/keys",
            json={"team": f"t{i}", "budget_usd": budget, "period": "day"},
            headers={"authorization": f"Bearer {MASTER}"},
        )
        assert resp.status_code == 201, resp.text
        out.append((resp.json()["id"], resp.json()["secret"], budget))
    return out


def key_usage(gw: GatewayProcess, key_id: str) -> tuple[float, float]:
    resp = httpx.get(gw.url + f"/admin/keys/{key_id}",
                     headers={"authorization": f"Bearer {MASTER}"})  # fmt: skip
    body = resp.json()
    return body["spent_usd"], body["reserved_usd"]


def wait_spools_empty(fleet: Fleet, timeout: float = 30) -> dict[str, dict[str, Any]]:
    deadline = time.time() + timeout
    while True:
        logs = {name: ready(gw)["request_log"] for name, gw in fleet.gateways.items()}
        if all(entry["spool_depth"] == 0 for entry in logs.values()) or time.time() > deadline:
            return logs
        time.sleep(0.2)


def postgres_rows(url: str) -> list[dict[str, Any]]:
    with psycopg.connect(url) as db, db.cursor() as cur:
        cur.execute("SELECT request_id, api_key_id, status, cost_usd, replica FROM requests")
        names = [d.name for d in cur.description or []]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def report_total(url: str) -> float:
    out = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "report", "--log", url, "--by", "key",
         "--format", "json"],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return float(json.loads(out.stdout)["total"]["cost_usd"])


def test_fleet_survives_a_lost_replica_and_a_postgres_outage(
    tmp_path: Path, redis_url: str, postgres_server: PostgresServer, postgres_url: str
) -> None:
    up, up_port = fast_upstream()
    fleet = Fleet(tmp_path, redis_url, postgres_server, postgres_url, up_port)
    try:
        fleet.start()
        keys = create_keys(fleet.gateways["r1"])
        run = Run()
        asyncio.run(timeline(fleet, [(k, s) for k, s, _ in keys], run))
        served = upstream_served(up_port)
        logs = wait_spools_empty(fleet)
        time.sleep(RESERVATION_TTL_S + 1)  # the killed replica's reservations expire
        usage = {k: key_usage(fleet.gateways["r1"], k) for k, _, _ in keys}
        for gw in fleet.gateways.values():  # a graceful stop flushes what is left
            gw.stop()
        rows = postgres_rows(postgres_url)
        total = report_total(postgres_url)
    finally:
        fleet.stop()
        up.kill()
        if postgres_server.proc is None or postgres_server.proc.poll() is not None:
            postgres_server.start()  # the session's server, for the tests after this one

    received = [a for a in run.answers if a.request_id is not None]
    ok = [a for a in received if a.status == 200]
    by_id = Counter(r["request_id"] for r in rows)
    missing = [a.request_id for a in received if a.request_id not in by_id]
    expected = math.fsum(
        (a.prompt_tokens * IN_PRICE + a.completion_tokens * OUT_PRICE) / 1e6 for a in ok
    )
    spooled = {name: entry["spooled_total"] for name, entry in logs.items()}
    statuses = Counter(a.status for a in run.answers)
    print(
        f"\nfleet run: {SECONDS:.0f} s, {len(run.answers)} answers received "
        f"({dict(statuses)}), {sum(run.failures.values())} cut off ({dict(run.failures)}); "
        f"upstream served {served}; Postgres rows {len(rows)}, answers missing {len(missing)}, "
        f"duplicates {sum(n - 1 for n in by_id.values())}; spooled rows per replica {spooled}, "
        f"spool depth after { ({n: e['spool_depth'] for n, e in logs.items()}) }; "
        f"report ${total:.4f} vs priced usage ${expected:.4f}; policy on all replicas in "
        f"{run.policy_spread_s if run.policy_spread_s is None else round(run.policy_spread_s, 2)} s"
    )
    for (key_id, _, budget), (spent, reserved) in zip(keys, usage.values(), strict=True):
        logged = math.fsum(r["cost_usd"] for r in rows if r["api_key_id"] == key_id)
        print(f"  key {key_id}: budget ${budget:.2f}, spent ${spent:.4f} (log ${logged:.4f}), "
              f"open reservations ${reserved:.4f}")  # fmt: skip
        assert spent <= budget + 1e-9
        assert logged <= budget + 1e-9
        assert reserved == 0
    assert statuses[200] > 0 and statuses[429] > 0, statuses  # budgets ran out during the run
    assert not missing, missing[:10]
    assert all(n == 1 for n in by_id.values())
    assert sum(spooled.values()) > 0  # Postgres was down while requests were answered
    assert all(entry["spool_depth"] == 0 for entry in logs.values()), logs
    assert round(total, 2) == round(expected, 2), (total, expected)
    assert math.isclose(total, expected, abs_tol=1e-6), (total, expected)
    assert {r["replica"] for r in rows} == {"r1", "r2", "r3"}
    assert run.policy_spread_s is not None, run.policy_versions
    assert run.policy_spread_s <= POLICY_SPREAD_S
