"""Endpoint choice by `scheduling:` presets, scorers and sticky sessions, over real HTTP to
test upstreams (several fake vLLM servers, their /metrics pages from tests/support)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.backends.base import CallLimits, UpstreamCall
from gateway.backends.vllm_pool import EngineState, VllmPool
from gateway.backends.vllm_pool.endpoints import Endpoint
from gateway.backends.vllm_pool.scheduling import block_hashes, prompt_text, queue_load
from policies.loader import PolicyError, parse_policy
from policies.schema import VllmModel
from tests.support.inprocess import in_process_gateway
from tests.support.upstream import Upstream
from tests.support.vllm_metrics import new_names


@pytest.fixture
def ups() -> Iterator[list[Upstream]]:
    started = [Upstream(n).start() for n in ("a", "b", "c")]
    yield started
    for up in started:
        up.stop()


def pool(ups: list[Upstream], client: httpx.AsyncClient, scheduling: Any = None) -> VllmPool:
    cfg: dict[str, Any] = {
        "provider": "vllm",
        "endpoints": [u.base_url for u in ups],
        "pricing": {"input_per_1m": 1, "output_per_1m": 1},
    }
    if scheduling is not None:
        cfg["scheduling"] = scheduling
    return VllmPool("m", VllmModel.model_validate(cfg), client, health_interval_s=60)


def chat(text: str, user: str | None = None) -> UpstreamCall:
    body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": text}]}
    if user is not None:
        body["user"] = user
    return UpstreamCall("chat", body, 5, 0)


def doc(i: int) -> str:
    return f"document {i}: " + "".join(
        f"line {i}.{j} of a long shared context. " for j in range(60)
    )


async def test_default_is_least_outstanding(ups: list[Upstream], client: httpx.AsyncClient) -> None:
    p = pool(ups[:2], client)
    assert p.scheduler.preset == "least_outstanding" and p.scheduler.config is None
    for up in ups[:2]:
        up.mode, up.delay_s = "slow", 0.2
    for _ in range(2):
        await asyncio.gather(*(p.complete(chat("hi")) for _ in range(4)))
    assert [u.hits for u in ups[:2]] == [4, 4]


async def test_round_robin_alternates(ups: list[Upstream], client: httpx.AsyncClient) -> None:
    p = pool(ups, client, "round_robin")
    served = [(await p.complete(chat("hi"))).endpoint for _ in range(6)]
    urls = [u.base_url for u in ups]
    assert served == urls + urls


async def test_prefix_aware_follows_a_repeated_prefix_and_spreads_others(
    ups: list[Upstream], client: httpx.AsyncClient
) -> None:
    p = pool(ups, client, "prefix_aware")
    first = {i: (await p.complete(chat(doc(i)))).endpoint for i in range(6)}
    # Different prefixes spread: with no load, queue/outstanding tie, so ties are shuffled;
    # six documents on one of three endpoints would be a 1-in-243 draw.
    assert len(set(first.values())) > 1
    for turn in range(3):
        for i in range(6):
            again = await p.complete(chat(doc(i) + f" turn {turn}: and now?"))
            assert again.endpoint == first[i]


async def test_prefix_preference_yields_to_the_imbalance_bound(
    ups: list[Upstream], client: httpx.AsyncClient
) -> None:
    sched = {"scorers": {"prefix": 10, "outstanding": 1}, "max_imbalance": 2}
    p = pool(ups[:2], client, sched)
    home = (await p.complete(chat(doc(1)))).endpoint
    for up in ups[:2]:
        up.mode, up.delay_s = "slow", 0.3
    # Eight at once on one hot prefix: the endpoint holding it takes them until its load
    # passes twice the other's (at least 1), then the rest go to the other.
    got = await asyncio.gather(*(p.complete(chat(doc(1) + f" q{i}")) for i in range(8)))
    on_home = sum(1 for g in got if g.endpoint == home)
    assert 3 <= on_home <= 5, on_home


async def test_prefix_aware_keeps_a_prefix_where_the_queue_is_one_longer(
    ups: list[Upstream], client: httpx.AsyncClient
) -> None:
    # A multi-turn chat's next turn while its endpoint serves one other call and the other
    # endpoint is idle: a full prefix match outweighs a queue one request shorter. (Load
    # scored "relative to the busiest" gave 1-vs-0 a whole point on both queue and
    # outstanding, outvoting prefix: 2 x 1.0, so the turn went cold to the idle endpoint.)
    p = pool(ups[:2], client, "prefix_aware")
    home = (await p.complete(chat(doc(1)))).endpoint
    home_up = next(u for u in ups[:2] if u.base_url == home)
    home_up.mode, home_up.delay_s = "slow", 0.5
    other_call = asyncio.create_task(p.complete(chat(doc(1) + " a question")))
    await asyncio.sleep(0.15)
    assert p.health.endpoints[[e.base_url for e in p.health.endpoints].index(home)].outstanding
    again = await p.complete(chat(doc(1) + " the next turn"))
    assert again.endpoint == home
    assert (await other_call).endpoint == home


@pytest.mark.parametrize("scorer", ["queue", "kv"])
async def test_queue_and_kv_scorers_read_the_endpoints_metrics(
    scorer: str, ups: list[Upstream], client: httpx.AsyncClient
) -> None:
    busy, idle = (new_names(9, 5, 0.9, 0, 0), new_names(1, 0, 0.1, 0, 0))
    ups[0].metrics_text, ups[1].metrics_text = busy, idle
    p = pool(ups[:2], client, {"scorers": {scorer: 1}})
    await p.engines.read_all()
    assert p.engine_states()[ups[0].base_url].waiting == 5
    served = {(await p.complete(chat("hi"))).endpoint for _ in range(5)}
    assert served == {ups[1].base_url}
    ups[0].metrics_text, ups[1].metrics_text = idle, busy
    await p.engines.read_all()
    served = {(await p.complete(chat("hi"))).endpoint for _ in range(5)}
    assert served == {ups[0].base_url}


async def test_queue_scorer_falls_back_to_outstanding_without_metrics(
    ups: list[Upstream], client: httpx.AsyncClient
) -> None:
    p = pool(ups[:2], client, {"scorers": {"queue": 1}})
    await p.engines.read_all()  # both answer 404: no vLLM metrics
    for up in ups[:2]:
        up.mode, up.delay_s = "slow", 0.2
    await asyncio.gather(*(p.complete(chat("hi")) for _ in range(6)))
    assert [u.hits for u in ups[:2]] == [3, 3]


def test_queue_load_swaps_our_stale_part_for_the_live_count() -> None:
    e = Endpoint("http://a/v1")
    e.outstanding = 2
    assert queue_load(e) == 2  # no vLLM figures: this process's count
    # Read when 1 of vLLM's 5 was ours; 3 of ours in flight now: 4 others' + 3 ours.
    e.engine, e.own_at_read, e.outstanding = EngineState(running=3, waiting=2, read_at=1), 1, 3
    assert queue_load(e) == 7
    e.outstanding = 0  # ours finished since the read: only the others' remain
    assert queue_load(e) == 4
    # vLLM counted fewer than we had out (in transit, or done there): never below ours.
    e.engine, e.own_at_read, e.outstanding = EngineState(running=1, read_at=1), 4, 2
    assert queue_load(e) == 2


async def test_queue_scorer_counts_a_burst_sent_since_the_last_read(
    ups: list[Upstream], client: httpx.AsyncClient
) -> None:
    # One other client's request on b when the metrics were read; none then on a. The
    # figures stay as read (poll interval 60 s) while a burst of six goes out: scored on the
    # bare figures, a looks idle all along and takes all six; with our live count on top
    # it takes its share.
    ups[0].metrics_text, ups[1].metrics_text = new_names(0, 0, 0, 0, 0), new_names(1, 0, 0, 0, 0)
    p = pool(ups[:2], client, {"scorers": {"queue": 1}})
    await p.engines.read_all()
    for up in ups[:2]:
        up.mode, up.delay_s = "slow", 0.3
    got = await asyncio.gather(*(p.complete(chat("hi")) for _ in range(6)))
    on_a = sum(1 for g in got if g.endpoint == ups[0].base_url)
    assert on_a in (3, 4), on_a


async def test_prefix_aware_imbalance_bound_sees_a_burst_with_stale_metrics(
    ups: list[Upstream], client: httpx.AsyncClient
) -> None:
    # Both endpoints idle when last read. Eight calls on one hot prefix at once: the bound
    # must see the calls already sent to the prefix's endpoint, not vLLM's figure from before
    # them (that piled all eight onto it).
    for up in ups[:2]:
        up.metrics_text = new_names(0, 0, 0, 0, 0)
    p = pool(ups[:2], client, "prefix_aware")
    await p.engines.read_all()
    home = (await p.complete(chat(doc(1)))).endpoint
    for up in ups[:2]:
        up.mode, up.delay_s = "slow", 0.3
    got = await asyncio.gather(*(p.complete(chat(doc(1) + f" q{i}")) for i in range(8)))
    on_home = sum(1 for g in got if g.endpoint == home)
    assert 3 <= on_home <= 5, on_home


async def test_sticky_by_user_field(ups: list[Upstream], client: httpx.AsyncClient) -> None:
    sched = {"scorers": {"outstanding": 1}, "sticky": {"field": "user"}}
    p = pool(ups, client, sched)
    limits = CallLimits(5, 0, sticky_field="user")
    homes = {}
    for user in ("ann", "bob", "cy", "dee"):
        call = limits.call("chat", chat("hi", user).body)
        assert call.affinity == user
        homes[user] = (await p.complete(call)).endpoint
    for _ in range(3):
        for user, home in homes.items():
            assert (await p.complete(limits.call("chat", chat("x", user).body))).endpoint == home
    # Its endpoint out of use: the session moves, and stays on the new one.
    moved = next(e for e in p.endpoints if e.base_url == homes["ann"])
    moved.healthy = False
    new = (await p.complete(limits.call("chat", chat("x", "ann").body))).endpoint
    assert new != homes["ann"]
    moved.healthy = True
    assert (await p.complete(limits.call("chat", chat("x", "ann").body))).endpoint == new


async def test_sticky_by_header(ups: list[Upstream], client: httpx.AsyncClient) -> None:
    p = pool(ups, client, {"scorers": {"outstanding": 1}, "sticky": {"header": "x-session-id"}})
    limits = CallLimits(5, 0, sticky_header="x-session-id")
    body = chat("hi").body
    homes = {s: (await p.complete(limits.call("chat", body, {"x-session-id": s}))).endpoint
             for s in ("s1", "s2", "s3")}  # fmt: skip
    for _ in range(4):
        for s, home in homes.items():
            got = await p.complete(limits.call("chat", body, {"x-session-id": s}))
            assert got.endpoint == home
    assert limits.call("chat", body, {}).affinity is None


def test_block_hashes_chain_and_prompt_text() -> None:
    a, b = block_hashes("x" * 100 + "y" * 50, 50), block_hashes("x" * 100 + "z" * 50, 50)
    assert len(a) == 3 and a[:2] == b[:2] and a[2] != b[2]
    assert block_hashes("short", 50) == []
    body = {"messages": [{"role": "system", "content": "S"},
                         {"role": "user", "content": [{"type": "text", "text": "T"}]}]}  # fmt: skip
    assert prompt_text(body) == "system\x00S\x00user\x00T"


async def test_ead_calls_of_one_request_land_on_one_endpoint_per_model(
    client: httpx.AsyncClient,
) -> None:
    from cascades.ead import EadCascade
    from policies.schema import EadRoute

    sure, unsure = {"x": 0.0}, {"x": math.log(0.5), "y": math.log(0.5)}
    small_ups = [Upstream(f"s{i}", finish_reason="length").start() for i in range(3)]
    large_ups = [Upstream(f"l{i}", finish_reason="length").start() for i in range(3)]
    try:
        for up in small_ups:
            up.top_logprobs = [sure, unsure]  # hands over at its second token
        for up in large_ups:
            up.top_logprobs = [sure, sure]  # and hands back
        backends = {"s": pool(small_ups, client), "l": pool(large_ups, client)}
        route = EadRoute(kind="ead", small="s", large="l", window=1, threshold=0.5, chunk=2, span=2)
        cascade = EadCascade("ead", route, {m: (lambda p, c, _: 0.0) for m in "sl"}, 5, 0)
        used: dict[str, set[str]] = {"s": set(), "l": set()}
        for _ in range(6):
            result = await cascade.complete(
                "completions", {"prompt": "p", "max_tokens": 12}, backends
            )
            for step in result.steps:
                assert step.detail["calls"] >= 3  # several calls, and all on one endpoint
                assert "," not in step.endpoint, step.endpoint
                used[step.model].add(step.endpoint)
        # Requests still spread (ties shuffled): six on one of three endpoints is 1 in 243.
        assert len(used["s"]) > 1 or len(used["l"]) > 1
    finally:
        for up in small_ups + large_ups:
            up.stop()


SCHED_POLICY = """\
version: 1
models:
  m:
    provider: vllm
    endpoints: [http://127.0.0.1:1/v1]
    pricing: {{input_per_1m: 1, output_per_1m: 1}}
    scheduling:
{sched}
"""


def problems(sched: str) -> list[str]:
    with pytest.raises(PolicyError) as exc:
        parse_policy(SCHED_POLICY.format(sched=sched), "p.yaml")
    return [str(p) for p in exc.value.problems]


def test_scheduling_policy_is_validated_with_lines() -> None:
    ok = parse_policy(SCHED_POLICY.format(sched="      scorers: {prefix: 2, kv: 1}"))
    sched = ok.models["m"].scheduling
    assert not isinstance(sched, str) and sched.scorers.prefix == 2
    assert sched.prefix_block_chars == 256 and sched.sticky is None
    default = parse_policy(SCHED_POLICY.replace("    scheduling:\n{sched}\n", "").format())
    assert default.models["m"].scheduling == "least_outstanding"

    unknown = problems("      scorers:\n        prefix: 1\n        latency: 3")
    assert any(p.startswith("p.yaml:10:9 models.m.scheduling.scorers.latency:") for p in unknown)
    preset = problems("      fastest")
    assert any(p.startswith("p.yaml:7:5 models.m.scheduling:") for p in preset), preset
    sticky = problems("      scorers: {queue: 1}\n      sticky: {header: x, field: user}")
    assert any(
        p.startswith("p.yaml:9:7 models.m.scheduling.sticky:") and "exactly one" in p
        for p in sticky
    ), sticky
    zero = problems("      scorers: {prefix: 0}")
    assert any("models.m.scheduling.scorers:" in p and "above 0" in p for p in zero), zero
    field = problems("      scorers: {kv: 1}\n      sticky: {field: session}")
    assert any(p.startswith("p.yaml:9:16 models.m.scheduling.sticky.field:") for p in field)


GATEWAY_POLICY = """
version: 1
defaults: {{health_interval_s: 60}}
models:
  local:
    provider: vllm
    endpoints: [{urls}]
    pricing: {{input_per_1m: 1.0, output_per_1m: 2.0}}
    scheduling:
      scorers: {{outstanding: 1}}
      sticky: {{header: X-Session-Id}}
"""


async def test_sticky_header_through_the_gateway(
    ups: list[Upstream], client: httpx.AsyncClient, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.delenv("ROUTEGATE_MASTER_KEY", raising=False)

    def real_pools(name: str, config: Any) -> VllmPool:
        return VllmPool(name, config, client, health_interval_s=60)

    policy = GATEWAY_POLICY.format(urls=", ".join(u.base_url for u in ups))
    body = {"model": "local", "messages": [{"role": "user", "content": "hi"}]}
    async with in_process_gateway(policy, tmp_path, backend_factory=real_pools) as gw:
        for session in ("s1", "s2", "s3", "s4"):
            before = [u.hits for u in ups]
            for _ in range(4):
                r = await gw.client.post(
                    "/v1/chat/completions", json=body, headers={"x-session-id": session}
                )
                assert r.status_code == 200, r.text
            gained = [u.hits - b for u, b in zip(ups, before, strict=True)]
            assert sorted(gained) == [0, 0, 4], gained  # all four on one endpoint
