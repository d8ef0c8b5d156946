"""The State contract on RedisState over a real redis-server: the unit tier's tests that take the
`state` fixture (tests/unit/test_state.py, test_cache_store.py, test_pacing.py,
test_response_cache.py, test_learning_state.py, test_policy_store.py) rerun here, plus what
only redis has (replicas, key expiry)."""

from __future__ import annotations

import uuid

import redis.asyncio as aioredis

from gateway.state import open_state
from tests.support.contract import state_tests
from tests.unit import test_cache_store as cache_store_tests
from tests.unit import test_learned_plan as learned_plan_tests
from tests.unit import test_learning_state as learning_state_tests
from tests.unit import test_pacing as pacing_tests
from tests.unit import test_policy_store as policy_store_tests
from tests.unit import test_response_cache as response_cache_tests
from tests.unit import test_state as state_contract_tests
from tests.unit.test_state import START, T0, W, make_key

_MODULES = (
    state_contract_tests,
    cache_store_tests,
    pacing_tests,
    response_cache_tests,
    learning_state_tests,
    learned_plan_tests,
    policy_store_tests,
)
_names = [name for module in _MODULES for name in state_tests(module)]
assert len(_names) == len(set(_names)), "two contract tests share a name"
for _module in _MODULES:
    globals().update(state_tests(_module))


async def test_redis_replicas_share_state_and_keys_expire(redis_url: str) -> None:
    p = f"test-{uuid.uuid4().hex[:12]}"
    a = await open_state(redis_url, prefix=p)
    b = await open_state(redis_url, prefix=p)
    other = await open_state(redis_url, prefix=p + "-other")
    raw = aioredis.Redis.from_url(redis_url)
    try:
        key = make_key(7)
        await a.put_key(key)
        assert await b.key_by_hash(key.secret_hash) == key
        assert await other.key_by_hash(key.secret_hash) is None  # prefixes do not mix
        assert await other.has_keys() is False

        assert (await a.reserve("key:k7:2027-01", "r1", 0.5, 1.0, 60, T0)).ok
        await b.settle("key:k7:2027-01", "r1", 0.25)
        await a.window_hit("rpm:k7", 1, 10, W, START)
        # Once settled, a budget is just its spend: the reservation keys are gone.
        names = sorted(k.decode() for k in await raw.keys(f"{p}:*"))
        assert names == [
            f"{p}:budget:{{key:k7:2027-01}}:spent",
            f"{p}:has-keys",
            f"{p}:key-by-hash:{key.secret_hash}",
            f"{p}:key:{key.id}",
            f"{p}:keys",
            f"{p}:win:rpm:k7:{int(START // W)}",
        ]
        # Counters do not pile up forever; keys and the has-keys flag do not expire.
        assert 39 * 86400 < await raw.ttl(f"{p}:budget:{{key:k7:2027-01}}:spent") <= 40 * 86400
        assert 0 < await raw.pttl(f"{p}:win:rpm:k7:{int(START // W)}") <= 121_000
        assert await raw.ttl(f"{p}:key:{key.id}") == -1
        assert await raw.ttl(f"{p}:has-keys") == -1
    finally:
        await raw.aclose()
        for s in (a, b, other):
            await s.aclose()
