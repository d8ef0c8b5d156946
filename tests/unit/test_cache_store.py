"""The response-cache part of the State contract on MemoryState; the same tests run on a real
redis-server in tests/system/test_state_redis.py. Time is passed as `now`; nothing sleeps."""

from __future__ import annotations

import asyncio
import random

from gateway.state import MemoryState, State
from gateway.state.base import Eviction

T0 = 1_800_000_000.0
NS = "chat"


def blob(size: int, fill: str = "x") -> bytes:
    return fill.encode() * size


async def put(
    state: State,
    key: str,
    *,
    cost: float = 1.0,
    size: int = 100,
    eviction: Eviction = "lru",
    max_bytes: int = 300,
    ttl_s: float = 3600.0,
    now: float = T0,
    namespace: str = NS,
) -> list[str]:
    return await state.cache_put(namespace, key, blob(size), cost, eviction, max_bytes, ttl_s, now)


async def test_miss_put_hit_counts_hits(state: State) -> None:
    assert await state.cache_get(NS, "k1", T0) is None
    assert await state.cache_usage(NS) == (0, 0)
    assert await state.cache_put(NS, "k1", b'{"a": 1}', 0.25, "gdsf", 1000, 60.0, T0) == []
    assert await state.cache_usage(NS) == (1, 8)
    first = await state.cache_get(NS, "k1", T0 + 1)
    second = await state.cache_get(NS, "k1", T0 + 2)
    assert first is not None and second is not None
    assert first.value == b'{"a": 1}'
    assert first.cost_usd == 0.25
    assert first.created_at == T0
    assert (first.hits, second.hits) == (1, 2)


async def test_entry_expires_by_ttl(state: State) -> None:
    await put(state, "k1", ttl_s=10.0)
    assert await state.cache_get(NS, "k1", T0 + 9.9) is not None
    assert await state.cache_get(NS, "k1", T0 + 10.0) is None  # expired: a miss, and removed
    assert await state.cache_usage(NS) == (0, 0)
    assert await state.cache_get(NS, "k1", T0 + 9.9) is None  # removed means gone


async def test_put_sweeps_expired_entries_before_evicting_live_ones(state: State) -> None:
    await put(state, "old", ttl_s=5.0, now=T0)
    await put(state, "a", now=T0 + 1)
    await put(state, "b", now=T0 + 2)
    # Full (300 bytes); "old" is expired by now, so it goes, not the least recent live one.
    assert await put(state, "c", now=T0 + 6) == []
    assert await state.cache_usage(NS) == (3, 300)
    assert await state.cache_get(NS, "a", T0 + 7) is not None


async def test_lru_evicts_least_recently_used(state: State) -> None:
    for i, key in enumerate(["a", "b", "c"]):
        await put(state, key, now=T0 + i)
    assert await state.cache_get(NS, "a", T0 + 10) is not None  # a is now the most recent
    assert await put(state, "d", now=T0 + 11) == ["b"]
    assert await put(state, "e", now=T0 + 12) == ["c"]
    assert await state.cache_usage(NS) == (3, 300)


async def test_lec_keeps_highest_frequency_times_cost(state: State) -> None:
    # "hot" missed three times before it was stored: the ghost table carries frequency 3.
    for t in range(3):
        assert await state.cache_get(NS, "hot", T0 + t) is None
    await put(state, "hot", cost=1.0, eviction="lec")  # expected cost 3 * 1
    await put(state, "pricey", cost=2.5, eviction="lec")  # 1 * 2.5
    await put(state, "cheap", cost=1.0, eviction="lec")  # 1 * 1
    assert await put(state, "new", cost=2.0, eviction="lec") == ["cheap"]
    # A hit raises the frequency: "new" (2 * 2.0 = 4) now outranks "hot" (3).
    assert await state.cache_get(NS, "new", T0 + 5) is not None
    assert await put(state, "newer", cost=2.6, eviction="lec") == ["pricey"]
    assert await put(state, "newest", cost=2.9, eviction="lec") == ["newer"]
    assert await put(state, "last", cost=3.5, eviction="lec") == ["newest"]
    assert await put(state, "final", cost=3.5, eviction="lec") == ["hot"]


async def test_gdsf_weighs_size_and_ages(state: State) -> None:
    kw = {"eviction": "gdsf", "max_bytes": 300}
    await put(state, "big", cost=1.0, size=200, **kw)  # H = 1 / 200 = 0.005
    await put(state, "small", cost=1.0, size=100, **kw)  # H = 0.01
    # Same cost and frequency: the larger entry goes first.
    assert await put(state, "a", cost=1.5, size=100, **kw) == ["big"]  # L = 0.005; a = 0.015
    assert await put(state, "b", cost=0.6, size=100, **kw) == []  # 0.005 + 0.006 = 0.011
    # Without aging "c" would rank 0.006, below "small" (0.01), and never be admitted; with
    # L = 0.005 it ranks 0.011, so "small" goes (and L becomes 0.01).
    assert await put(state, "c", cost=0.6, size=100, **kw) == ["small"]
    # A hit doubles the frequency part: b = 0.01 + 2 * 0.006 = 0.022; c (0.011) is the lowest.
    assert await state.cache_get(NS, "b", T0 + 1) is not None
    assert await put(state, "d", cost=2.0, size=100, **kw) == ["c"]


async def test_new_entry_that_ranks_lowest_is_not_kept(state: State) -> None:
    await put(state, "a", cost=5.0, eviction="lec", max_bytes=200)
    await put(state, "b", cost=5.0, eviction="lec", max_bytes=200)
    assert await put(state, "c", cost=0.1, eviction="lec", max_bytes=200) == ["c"]
    assert await state.cache_get(NS, "c", T0) is None
    assert await put(state, "huge", size=201, max_bytes=200) == ["huge"]  # larger than it all
    assert await state.cache_usage(NS) == (2, 200)


async def test_replacing_an_entry_keeps_its_frequency_and_bytes_right(state: State) -> None:
    await put(state, "a", size=100, eviction="lec", max_bytes=1000)
    assert await state.cache_get(NS, "a", T0 + 1) is not None
    await put(state, "a", size=50, eviction="lec", max_bytes=1000, now=T0 + 2)
    assert await state.cache_usage(NS) == (1, 50)
    entry = await state.cache_get(NS, "a", T0 + 3)
    assert entry is not None and entry.created_at == T0 + 2 and entry.hits == 1


async def test_namespaces_are_isolated(state: State) -> None:
    await put(state, "k", namespace="route-a", max_bytes=100)
    assert await state.cache_get("route-b", "k", T0) is None
    await put(state, "k", namespace="route-b", size=50, max_bytes=100)
    await put(state, "k2", namespace="route-b", size=50, max_bytes=100)  # fills b, not a
    a = await state.cache_get("route-a", "k", T0)
    b = await state.cache_get("route-b", "k", T0)
    assert a is not None and b is not None and len(a.value) == 100 and len(b.value) == 50
    assert await state.cache_usage("route-a") == (1, 100)
    assert await state.cache_usage("route-b") == (2, 100)


async def test_concurrent_hits_and_puts_stay_consistent(state: State) -> None:
    await put(state, "hot", max_bytes=10_000)
    entries = await asyncio.gather(*(state.cache_get(NS, "hot", T0 + 1) for _ in range(50)))
    assert sorted(e.hits for e in entries if e is not None) == list(range(1, 51))

    results = await asyncio.gather(
        *(put(state, f"k{i:02d}", max_bytes=1000, now=T0 + 2) for i in range(40))
    )
    evicted = [k for r in results for k in r]
    assert len(evicted) == len(set(evicted)) == 31  # 41 entries of 100 bytes, room for 10
    assert await state.cache_usage(NS) == (10, 1000)


async def test_both_stores_evict_the_same_way(state: State) -> None:
    """A random stream of gets and puts gives the same answers on `state` as on MemoryState:
    the Lua scripts and the Python code are one behaviour."""
    reference = MemoryState()
    rng = random.Random(7)
    for eviction in ("gdsf", "lec", "lru"):
        namespace = f"ns-{eviction}"
        for step in range(300):
            key = f"q{min(int(rng.paretovariate(1.2)), 40)}"
            now = T0 + step
            got = await state.cache_get(namespace, key, now)
            want = await reference.cache_get(namespace, key, now)
            assert (got is None) == (want is None), (eviction, step)
            if got is None:
                args = (blob(rng.randint(20, 200)), rng.choice([0.01, 0.3, 1.0]), eviction)
                got_evicted = await state.cache_put(namespace, key, *args, 1500, 120.0, now)
                want_evicted = await reference.cache_put(namespace, key, *args, 1500, 120.0, now)
                assert got_evicted == want_evicted, (eviction, step)
        assert await state.cache_usage(namespace) == await reference.cache_usage(namespace)
