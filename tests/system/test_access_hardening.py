"""A gateway that fails closed (issue 11, items 4, 5, 10, 14), through the real `routegate serve`
process, the openai SDK and httpx, on both state stores where state is involved:

- authentication is the explicit `access.auth` setting, never inferred from an empty store;
- a Redis outage is 503 `state_unavailable` with `retry-after`, /readyz goes 503, every request
  keeps its request-log row, and a Redis restarted empty opens nothing;
- failed authentication is throttled per client address (a second loopback address keeps
  working), shared by replicas through the store;
- /metrics, /v1/models and /readyz are guarded once keys are required.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import redis

from tests.support.gateway import GatewayProcess
from tests.support.redis_server import RedisServer, start_redis_server, stop_redis_server
from tests.support.upstream import Upstream

MASTER = "master-hardening-key"
TOKEN = "metrics-hardening-token"
MESSAGES = [{"role": "user", "content": "hello"}]
CHAT = {"model": "cheap", "messages": MESSAGES}
LIMIT = 10  # access.auth_failures.limit's default

POLICY = """
version: 1
state: {{url: "{state}", prefix: "{prefix}", connect_timeout_s: 0.5, timeout_s: 0.5}}
defaults: {{max_tokens: 5}}
{access}
models:
  fast:
    provider: vllm
    endpoints: [{up}]
    pricing: {{input_per_1m: 1.0, output_per_1m: 2.0}}
routes:
  cheap: {{models: [fast]}}
  other: {{models: [fast]}}
  cached:
    models: [fast]
    cache: {{scope: global}}
  paced:
    models: [fast]
    pacing: {{budget_usd: 10.0, period: day}}
"""


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    up = Upstream("u").start()
    yield up
    up.stop()


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue("redis_url") if request.param == "redis" else "memory"


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test alone: the test kills, freezes and restarts it."""
    server = start_redis_server(tmp_path / "redis")
    yield server  # a test that restarts it puts the new process in `proc`
    stop_redis_server(server)


def write_policy(
    tmp_path: Path, up: Upstream, state: str, access: str = "", prefix: str = ""
) -> Path:
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        POLICY.format(
            state=state, up=up.base_url, prefix=prefix or f"h{time.time_ns()}", access=access
        )
    )
    return policy


def start(
    tmp_path: Path, policy: Path, env: dict[str, str] | None = None, name: str = "gw"
) -> GatewayProcess:
    work = tmp_path / name
    work.mkdir(exist_ok=True)
    base = {"ROUTEGATE_MASTER_KEY": MASTER, "ROUTEGATE_METRICS_TOKEN": ""}
    return GatewayProcess(policy, work, env={**base, **(env or {})}).start()


def bearer(secret: str) -> dict[str, str]:
    return {"authorization": f"Bearer {secret}"}


def from_addr(addr: str) -> httpx.Client:
    """A client whose connections come from `addr`, another loopback source address."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=addr), timeout=10)


def new_key(gw: GatewayProcess, **spec: object) -> tuple[str, str]:
    with from_addr("127.0.0.254") as c:
        resp = c.post(gw.url + "/admin/keys", json={"team": "t", **spec}, headers=bearer(MASTER))
    assert resp.status_code == 201, resp.text
    return resp.json()["id"], resp.json()["secret"]


def sdk(gw: GatewayProcess, secret: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=secret, max_retries=0)


def assert_openai_error(resp: httpx.Response, status: int, code: str) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    error = resp.json()["error"]
    assert error["code"] == code and error["type"] and error["message"]
    return error


# -- item 4: authentication is a setting ----------------------------------------------------


def test_a_master_key_means_keys_are_required_even_on_an_empty_store(
    store: str, upstream: Upstream, tmp_path: Path
) -> None:
    prefix = f"h{time.time_ns()}"
    policy = write_policy(tmp_path, upstream, store, prefix=prefix)
    gw = start(tmp_path, policy)
    try:
        # No key was ever created: before, this gateway served anyone.
        resp = httpx.post(gw.url + "/v1/chat/completions", json=CHAT)
        assert_openai_error(resp, 401, "missing_api_key")
        with pytest.raises(openai.AuthenticationError) as exc:
            sdk(gw, "sk-rg-guess").chat.completions.create(model="cheap", messages=MESSAGES)
        assert exc.value.body["code"] == "invalid_api_key"
        # The master key is accepted on /v1, without key limits, and logged as the master.
        raw = sdk(gw, MASTER).chat.completions.with_raw_response.create(
            model="cheap", messages=MESSAGES
        )
        assert raw.parse().choices[0].message.content == "hi from u"
        row = gw.record(raw.headers["x-routegate-request-id"])
        assert row["api_key_id"] == "master" and row["team"] == "master"
        _, secret = new_key(gw)
        assert sdk(gw, secret).chat.completions.create(model="cheap", messages=MESSAGES)
    finally:
        gw.stop()

    # The store loses its data (Redis flushed, the state file gone) and the gateway restarts.
    if store == "memory":
        gw.state_path.unlink()
    else:
        redis.Redis.from_url(store).flushall()
    gw = start(tmp_path, policy, name="gw-again")
    try:
        resp = httpx.post(gw.url + "/v1/chat/completions", json=CHAT)
        assert_openai_error(resp, 401, "missing_api_key")
        resp = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, headers=bearer(secret))
        assert_openai_error(resp, 401, "invalid_api_key")
    finally:
        gw.stop()


def test_an_open_gateway_is_an_explicit_setting(
    store: str, upstream: Upstream, tmp_path: Path
) -> None:
    policy = write_policy(tmp_path, upstream, store, access="access: {auth: open}")
    gw = start(tmp_path, policy)
    try:
        key_id, secret = new_key(gw)
        assert httpx.post(gw.url + "/v1/chat/completions", json=CHAT).status_code == 200
        # An unknown token is anonymous here: nobody needs one.
        raw = sdk(gw, "unused").chat.completions.with_raw_response.create(
            model="cheap", messages=MESSAGES
        )
        assert gw.record(raw.headers["x-routegate-request-id"])["api_key_id"] is None
        # A key still counts (its team, limits and budget), and a revoked one is refused.
        raw = sdk(gw, secret).chat.completions.with_raw_response.create(
            model="cheap", messages=MESSAGES
        )
        assert gw.record(raw.headers["x-routegate-request-id"])["api_key_id"] == key_id
        revoke = httpx.delete(gw.url + f"/admin/keys/{key_id}", headers=bearer(MASTER))
        assert revoke.status_code == 200
        resp = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, headers=bearer(secret))
        assert_openai_error(resp, 401, "key_revoked")
    finally:
        gw.stop()


# -- item 5: a state store outage -------------------------------------------------------------


def wait_ready(gw: GatewayProcess, status: int, timeout: float = 15) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        resp = httpx.get(gw.url + "/readyz", headers=bearer(MASTER), timeout=5)
        if resp.status_code == status or time.monotonic() > deadline:
            return resp
        time.sleep(0.2)


def test_a_redis_outage_is_503_and_a_restart_on_an_empty_redis_opens_nothing(
    own_redis: RedisServer, upstream: Upstream, tmp_path: Path
) -> None:
    policy = write_policy(tmp_path, upstream, own_redis.url)
    gw = start(tmp_path, policy)
    try:
        _, secret = new_key(gw, budget_usd=5.0)
        key = bearer(secret)
        assert httpx.post(gw.url + "/v1/chat/completions", json=CHAT, headers=key).is_success
        assert wait_ready(gw, 200).json()["state"] == "ok"

        own_redis.proc.kill()
        own_redis.proc.wait()
        t0 = time.monotonic()
        resp = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, headers=key, timeout=10)
        assert time.monotonic() - t0 < 5
        assert_openai_error(resp, 503, "state_unavailable")
        assert int(resp.headers["retry-after"]) >= 1
        row = gw.record(resp.headers["x-routegate-request-id"])
        assert row["status"] == 503 and "state store" in row["error"]
        ready = wait_ready(gw, 503)
        assert ready.status_code == 503 and ready.json()["state"] == "unavailable"
        assert httpx.get(gw.url + "/healthz").status_code == 200  # the process is up
        admin = httpx.get(gw.url + "/admin/keys", headers=bearer(MASTER))
        assert_openai_error(admin, 503, "state_unavailable")
        page = httpx.get(gw.url + "/dashboard/data.json", headers=bearer(MASTER))
        assert page.status_code == 503 and page.json()["error"]["code"] == "state_unavailable"

        # Back, but empty: the keys are gone, and still nobody gets in without one.
        server = start_redis_server(tmp_path / "redis", port=own_redis.port)
        own_redis.proc = server.proc
        assert wait_ready(gw, 200).status_code == 200
        resp = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, headers=key)
        assert_openai_error(resp, 401, "invalid_api_key")
        resp = httpx.post(gw.url + "/v1/chat/completions", json=CHAT)
        assert_openai_error(resp, 401, "missing_api_key")
        assert httpx.post(
            gw.url + "/v1/chat/completions", json=CHAT, headers=bearer(MASTER)
        ).is_success
    finally:
        gw.stop()


def test_a_frozen_redis_cannot_hang_requests(
    own_redis: RedisServer, upstream: Upstream, tmp_path: Path
) -> None:
    policy = write_policy(tmp_path, upstream, own_redis.url)
    gw = start(tmp_path, policy)
    try:
        _, secret = new_key(gw)
        own_redis.proc.send_signal(signal.SIGSTOP)  # accepts connections, answers nothing
        try:
            t0 = time.monotonic()
            resp = httpx.post(
                gw.url + "/v1/chat/completions", json=CHAT, headers=bearer(secret), timeout=30
            )
            assert time.monotonic() - t0 < 4  # state.timeout_s is 0.5 s here
            assert_openai_error(resp, 503, "state_unavailable")
            t0 = time.monotonic()
            assert httpx.get(gw.url + "/readyz", timeout=30).status_code == 503
            assert time.monotonic() - t0 < 3
        finally:
            own_redis.proc.send_signal(signal.SIGCONT)
        assert wait_ready(gw, 200).status_code == 200
        ok = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, headers=bearer(secret))
        assert ok.status_code == 200, ok.text
    finally:
        gw.stop()


def test_during_an_outage_the_cache_fails_open_and_budgets_fail_closed(
    own_redis: RedisServer, upstream: Upstream, tmp_path: Path
) -> None:
    policy = write_policy(tmp_path, upstream, own_redis.url, access="access: {auth: open}")
    gw = start(tmp_path, policy, env={"ROUTEGATE_MASTER_KEY": ""})
    try:
        cached = {"model": "cached", "messages": MESSAGES, "temperature": 0}
        first = httpx.post(gw.url + "/v1/chat/completions", json=cached)
        assert first.headers["x-routegate-cache"] == "miss"
        assert (
            httpx.post(gw.url + "/v1/chat/completions", json=cached).headers["x-routegate-cache"]
            == "hit"
        )
        own_redis.proc.kill()
        own_redis.proc.wait()
        # The cache cannot answer: a miss, and the model answers (nothing to protect there).
        resp = httpx.post(gw.url + "/v1/chat/completions", json=cached)
        assert resp.status_code == 200 and resp.headers["x-routegate-cache"] == "miss"
        # A paced route's budget cannot be reserved: refused, not served unmetered.
        paced = httpx.post(gw.url + "/v1/chat/completions", json={**CHAT, "model": "paced"})
        assert_openai_error(paced, 503, "state_unavailable")
        assert gw.record(paced.headers["x-routegate-request-id"])["status"] == 503
        # A key cannot be looked up: refused too (it may be revoked or over budget).
        keyed = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, headers=bearer("sk-x"))
        assert_openai_error(keyed, 503, "state_unavailable")
        # Nothing to check: an anonymous call to a plain route is served.
        assert httpx.post(gw.url + "/v1/chat/completions", json=CHAT).status_code == 200
    finally:
        gw.stop()


# -- item 10: failed authentication is throttled per address ----------------------------------


def test_failed_authentication_is_throttled_per_address(
    store: str, upstream: Upstream, tmp_path: Path
) -> None:
    gw = start(
        tmp_path, write_policy(tmp_path, upstream, store), env={"ROUTEGATE_METRICS_TOKEN": TOKEN}
    )
    login = gw.url + "/dashboard/login"
    try:
        _, secret = new_key(gw)
        with from_addr("127.0.0.1") as a, from_addr("127.0.0.2") as b:
            for _ in range(LIMIT):
                assert a.post(login, data={"master_key": "guess"}).status_code == 401
            refused = a.post(login, data={"master_key": "guess"})
            assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
            assert "Too many failed" in refused.text and "set-cookie" not in refused.headers
            # The right key from the throttled address waits too: otherwise guessing goes on.
            assert a.post(login, data={"master_key": MASTER}).status_code == 429
            # A client cannot pick another address with a forwarded header.
            spoofed = a.post(
                login, data={"master_key": MASTER}, headers={"x-forwarded-for": "10.9.8.7"}
            )
            assert spoofed.status_code == 429
            # Another address is not locked out: the throttle is per address, not per account.
            right = b.post(login, data={"master_key": MASTER})
            assert right.status_code == 303 and "routegate_dashboard" in right.headers["set-cookie"]
            assert a.get(gw.url + "/admin/keys", headers=bearer(MASTER)).status_code == 429
            assert b.get(gw.url + "/admin/keys", headers=bearer(MASTER)).status_code == 200

        doors = {
            "127.0.0.3": ("GET", "/admin/keys", "invalid_master_key"),
            "127.0.0.4": ("GET", "/dashboard/data.json", "invalid_master_key"),
            "127.0.0.5": ("POST", "/v1/chat/completions", "invalid_api_key"),
            "127.0.0.6": ("GET", "/metrics", "invalid_metrics_token"),
        }
        for addr, (method, path, code) in doors.items():
            with from_addr(addr) as c:
                for i in range(LIMIT):
                    resp = c.request(method, gw.url + path, json=CHAT, headers=bearer(f"x{i}"))
                    assert_openai_error(resp, 401, code)
                resp = c.request(method, gw.url + path, json=CHAT, headers=bearer("again"))
                assert_openai_error(resp, 429, "too_many_auth_failures")
                assert int(resp.headers["retry-after"]) >= 1
        with from_addr("127.0.0.5") as c:
            # A valid API key is never locked out (it cannot be guessed); the master key,
            # which could be, waits like any other guess.
            ok = c.post(gw.url + "/v1/chat/completions", json=CHAT, headers=bearer(secret))
            assert ok.status_code == 200
            assert (
                c.post(
                    gw.url + "/v1/chat/completions", json=CHAT, headers=bearer(MASTER)
                ).status_code
                == 429
            )
            # /readyz still answers its probe, only without details.
            ready = c.get(gw.url + "/readyz", headers=bearer(MASTER))
            assert ready.status_code == 200 and ready.json() == {"status": "ready", "state": "ok"}
        with from_addr("127.0.0.6") as c:
            assert c.get(gw.url + "/metrics", headers=bearer(TOKEN)).status_code == 429
        with from_addr("127.0.0.7") as c:
            assert c.get(gw.url + "/metrics", headers=bearer(TOKEN)).status_code == 200
    finally:
        gw.stop()


def test_replicas_share_the_throttle(redis_url: str, upstream: Upstream, tmp_path: Path) -> None:
    policy = write_policy(
        tmp_path, upstream, redis_url, access="access: {auth_failures: {limit: 3, window_s: 30}}"
    )
    a, b = start(tmp_path, policy, name="a"), start(tmp_path, policy, name="b")
    try:
        for _ in range(3):
            assert httpx.get(a.url + "/admin/keys", headers=bearer("no")).status_code == 401
        resp = httpx.get(b.url + "/admin/keys", headers=bearer(MASTER))
        assert_openai_error(resp, 429, "too_many_auth_failures")
        assert int(resp.headers["retry-after"]) <= 60
    finally:
        a.stop()
        b.stop()


# -- item 14: the read endpoints ---------------------------------------------------------------


def ids(resp: httpx.Response) -> list[str]:
    assert resp.status_code == 200, resp.text
    return sorted(m["id"] for m in resp.json()["data"])


def test_read_endpoints_are_guarded_when_keys_are_required(
    store: str, upstream: Upstream, tmp_path: Path
) -> None:
    policy = write_policy(tmp_path, upstream, store)
    gw = start(tmp_path, policy, env={"ROUTEGATE_METRICS_TOKEN": TOKEN})
    everything = ["cached", "cheap", "fast", "other", "paced"]
    try:
        _, narrow = new_key(gw, routes=["cheap"])
        _, wide = new_key(gw)
        with from_addr("127.0.0.8") as c:
            metrics = gw.url + "/metrics"
            assert_openai_error(c.get(metrics), 401, "invalid_metrics_token")
            assert_openai_error(c.get(metrics, headers=bearer(wide)), 401, "invalid_metrics_token")
            for secret in (MASTER, TOKEN):
                shown = c.get(metrics, headers=bearer(secret))
                assert shown.status_code == 200 and "routegate_" in shown.text

            models = gw.url + "/v1/models"
            assert_openai_error(c.get(models), 401, "missing_api_key")
            assert ids(c.get(models, headers=bearer(narrow))) == ["cheap"]
            assert ids(c.get(models, headers=bearer(wide))) == everything
            assert ids(c.get(models, headers=bearer(MASTER))) == everything
            assert [m.id for m in sdk(gw, narrow).models.list()] == ["cheap"]

            ready = c.get(gw.url + "/readyz")
            assert ready.status_code == 200 and ready.json() == {"status": "ready", "state": "ok"}
            assert c.get(gw.url + "/readyz", headers=bearer(wide)).json() == {
                "status": "ready",
                "state": "ok",
            }
            for secret in (MASTER, TOKEN):
                detail = c.get(gw.url + "/readyz", headers=bearer(secret)).json()
                assert detail["healthy_models"] == ["fast"] and detail["policy_version"]
    finally:
        gw.stop()


def test_todays_open_read_endpoints_are_a_setting(upstream: Upstream, tmp_path: Path) -> None:
    access = "access: {metrics: open, models: open, readyz: open}"
    gw = start(tmp_path, write_policy(tmp_path, upstream, "memory", access=access))
    try:
        assert httpx.get(gw.url + "/metrics").status_code == 200
        assert ids(httpx.get(gw.url + "/v1/models")) == [
            "cached",
            "cheap",
            "fast",
            "other",
            "paced",
        ]
        assert httpx.get(gw.url + "/readyz").json()["healthy_models"] == ["fast"]
        # /v1 itself still needs a key: auth stays keys with a master key set.
        resp = httpx.post(gw.url + "/v1/chat/completions", json=CHAT)
        assert_openai_error(resp, 401, "missing_api_key")
    finally:
        gw.stop()
