"""The State contract on MemoryState (the unit tier's `state` fixture); the same tests run on a
real redis-server in tests/system/test_state_redis.py. Times are passed as `now`, so nothing
here sleeps to make a reservation expire or a window roll over."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from gateway.state import (
    MemoryState,
    PacingState,
    RedisState,
    State,
    StateUnavailable,
    VirtualKey,
    open_state,
    to_micros,
)
from gateway.state import memory as memory_module

T0 = 1_800_000_000.0  # a fixed "now"; every test moves time explicitly from here


def make_key(n: int = 1, **overrides: object) -> VirtualKey:
    fields: dict[str, object] = {
        "id": f"key_{n:08x}",
        "team": "search",
        "secret_hash": f"{n:064x}",
        "secret_prefix": f"rg-{n:04d}",
        "budget_usd": 12.5,
        "period": "month",
        "rpm": 60,
        "tpm": 100_000,
        "routes": ["chat", "tiny-small"],
        "name": f"key number {n}",
        "created_at": T0 + n,
        "pacing": {"target": 0.9, "horizon_s": 3600},
    }
    fields.update(overrides)
    return VirtualKey(**fields)  # type: ignore[arg-type]


@asynccontextmanager
async def replicas(state: State, n: int) -> AsyncIterator[list[State]]:
    """`state` plus, for Redis, n-1 more clients on the same keys (as other gateway replicas
    would be). MemoryState is one process: just itself."""
    extra: list[State] = []
    if isinstance(state, RedisState):
        extra = [await open_state(state.url, prefix=state.prefix) for _ in range(n - 1)]
    try:
        yield [state, *extra]
    finally:
        for s in extra:
            await s.aclose()


# -- virtual keys --------------------------------------------------------------------------------


async def test_key_crud_lookup_and_revoke(state: State) -> None:
    assert await state.has_keys() is False
    assert await state.list_keys() == []
    assert await state.key_by_id("key_00000001") is None
    assert await state.key_by_hash(f"{1:064x}") is None

    first, second = make_key(1), make_key(2, budget_usd=None, routes=None, pacing=None, rpm=None)
    await state.put_key(second)
    await state.put_key(first)
    assert await state.has_keys() is True
    assert await state.key_by_id(first.id) == first
    assert await state.key_by_hash(second.secret_hash) == second
    assert await state.list_keys() == [first, second]  # ordered by created_at

    # Replacing a key with a new secret moves the index: the old secret stops working.
    rotated = make_key(1, secret_hash="ab" * 32, secret_prefix="rg-new")
    await state.put_key(rotated)
    assert await state.key_by_hash(first.secret_hash) is None
    assert await state.key_by_hash(rotated.secret_hash) == rotated
    assert len(await state.list_keys()) == 2

    assert await state.revoke_key(first.id, T0 + 100) is True
    assert await state.revoke_key(first.id, T0 + 200) is True  # the first time stands
    revoked = await state.key_by_hash(rotated.secret_hash)
    assert revoked is not None
    assert revoked.revoked_at == T0 + 100
    assert revoked.active is False
    assert await state.revoke_key("key_missing", T0) is False
    assert await state.has_keys() is True  # stays true: the gateway keeps requiring a key


async def test_returned_keys_are_copies(state: State) -> None:
    key = make_key(3)
    await state.put_key(key)
    key.routes.append("changed-after-put")  # type: ignore[union-attr]
    got = await state.key_by_id(key.id)
    assert got is not None
    assert got.routes == ["chat", "tiny-small"]
    got.routes.append("changed-after-get")  # type: ignore[union-attr]
    got.team = "other"
    again = await state.key_by_id(key.id)
    assert again is not None
    assert again.routes == ["chat", "tiny-small"]
    assert again.team == "search"


# -- budgets -------------------------------------------------------------------------------------


async def test_reserve_within_and_over_the_limit(state: State) -> None:
    b = "key:key_1:2027-01"
    r1 = await state.reserve(b, "r1", 0.40, 1.00, 60, T0)
    assert (r1.ok, r1.spent_usd, r1.reserved_usd, r1.limit_usd) == (True, 0.0, 0.40, 1.00)
    r2 = await state.reserve(b, "r2", 0.40, 1.00, 60, T0)
    assert (r2.ok, r2.reserved_usd) == (True, 0.80)
    r3 = await state.reserve(b, "r3", 0.40, 1.00, 60, T0)
    assert (r3.ok, r3.reserved_usd) == (False, 0.80)  # refused: nothing recorded
    r4 = await state.reserve(b, "r4", 0.20, 1.00, 60, T0)  # fits exactly
    assert (r4.ok, r4.reserved_usd) == (True, 1.00)
    assert await state.budget_usage(b, T0) == (0.0, 1.00)
    # Another budget is independent.
    other = await state.reserve("key:key_2:2027-01", "r1", 0.90, 1.00, 60, T0)
    assert (other.ok, other.reserved_usd) == (True, 0.90)


async def test_settle_adds_the_actual_cost_and_frees_the_reservation(state: State) -> None:
    b = "key:key_1:2027-01"
    assert (await state.reserve(b, "r1", 0.50, 1.00, 60, T0)).ok
    assert await state.settle(b, "r1", 0.123456) == 0.123456
    assert await state.budget_usage(b, T0) == (0.123456, 0.0)
    # 0.123456 + 0.876544 == 1.0 exactly; one micro-dollar more does not fit.
    assert not (await state.reserve(b, "r2", 0.876545, 1.00, 60, T0)).ok
    r = await state.reserve(b, "r3", 0.876544, 1.00, 60, T0)
    assert (r.ok, r.spent_usd, r.reserved_usd) == (True, 0.123456, 0.876544)
    # Settling a second reservation adds up; settling an unknown id still charges.
    assert await state.settle(b, "r3", 0.5) == 0.623456
    assert await state.settle(b, "never-reserved", 0.000001) == 0.623457
    assert await state.budget_usage(b, T0) == (0.623457, 0.0)


async def test_release_frees_without_spending(state: State) -> None:
    b = "team:search:2027-01"
    assert (await state.reserve(b, "r1", 0.70, 1.00, 60, T0)).ok
    assert not (await state.reserve(b, "r2", 0.70, 1.00, 60, T0)).ok
    await state.release(b, "r1")
    await state.release(b, "r1")  # twice, and unknown ids: harmless
    await state.release("team:nobody:2027-01", "r9")
    assert await state.budget_usage(b, T0) == (0.0, 0.0)
    assert (await state.reserve(b, "r2", 1.00, 1.00, 60, T0)).ok


async def test_reserving_the_same_id_again_replaces_it(state: State) -> None:
    b = "key:key_1:2027-01"
    assert (await state.reserve(b, "r1", 0.60, 1.00, 60, T0)).ok
    r = await state.reserve(b, "r1", 0.90, 1.00, 60, T0)  # not 0.6 + 0.9
    assert (r.ok, r.reserved_usd) == (True, 0.90)


async def test_expired_reservations_are_dropped(state: State) -> None:
    b = "key:key_1:2027-01"
    assert (await state.reserve(b, "r1", 0.80, 1.00, 10, T0)).ok
    assert await state.budget_usage(b, T0 + 9.999) == (0.0, 0.80)
    assert not (await state.reserve(b, "r2", 0.50, 1.00, 10, T0 + 9.999)).ok
    # At its expiry time the reservation no longer counts: reading, then reserving.
    assert await state.budget_usage(b, T0 + 10) == (0.0, 0.0)
    r = await state.reserve(b, "r2", 0.50, 1.00, 10, T0 + 10)
    assert (r.ok, r.reserved_usd) == (True, 0.50)
    assert await state.budget_usage(b, T0 + 10) == (0.0, 0.50)


async def test_settle_after_expiry_still_counts(state: State) -> None:
    b = "key:key_1:2027-01"
    assert (await state.reserve(b, "slow", 0.80, 1.00, 10, T0)).ok
    # Another request drops the expired reservation and takes its room.
    assert (await state.reserve(b, "r2", 0.50, 1.00, 10, T0 + 20)).ok
    # The slow request finishes late: its cost is still charged.
    assert await state.settle(b, "slow", 0.70) == 0.70
    assert await state.budget_usage(b, T0 + 20) == (0.70, 0.50)
    assert not (await state.reserve(b, "r3", 0.01, 1.00, 10, T0 + 20)).ok


async def test_concurrent_reserves_admit_exactly_what_fits(state: State) -> None:
    b = "key:key_1:2027-01"
    fits, amount, calls = 37, 0.01, 500
    limit = fits * amount
    async with replicas(state, 4) as clients:
        results = await asyncio.gather(
            *(
                clients[i % len(clients)].reserve(b, f"r{i}", amount, limit, 60, T0)
                for i in range(calls)
            )
        )
        admitted = [f"r{i}" for i, r in enumerate(results) if r.ok]
        assert len(admitted) == fits
        assert all(r.reserved_usd <= limit for r in results)
        assert await state.budget_usage(b, T0) == (0.0, 0.37)
        await asyncio.gather(
            *(clients[i % len(clients)].settle(b, rid, amount) for i, rid in enumerate(admitted))
        )
    spent, reserved = await state.budget_usage(b, T0)
    assert to_micros(spent) == fits * 10_000
    assert spent == 0.37
    assert reserved == 0.0


async def test_concurrent_settles_lose_no_spend(state: State) -> None:
    b = "key:key_1:2027-01"
    calls = 500
    async with replicas(state, 4) as clients:
        reserved = await asyncio.gather(
            *(
                clients[i % len(clients)].reserve(b, f"r{i}", 0.01, 100.0, 60, T0)
                for i in range(calls)
            )
        )
        assert all(r.ok for r in reserved)
        totals = await asyncio.gather(
            *(clients[i % len(clients)].settle(b, f"r{i}", 0.000123) for i in range(calls))
        )
    assert to_micros(max(totals)) == calls * 123
    assert len({to_micros(t) for t in totals}) == calls  # every settle saw a distinct total
    spent, open_ = await state.budget_usage(b, T0)
    assert to_micros(spent) == calls * 123
    assert open_ == 0.0


# -- rate windows --------------------------------------------------------------------------------

W = 60.0
START = 30_000 * W  # the start of a fixed window


async def test_window_hit_allows_the_limit_then_refuses(state: State) -> None:
    now = START + 30  # half way through the window; the previous one is empty
    for i in range(5):
        hit = await state.window_hit("rpm:key_1", 1, 5, W, now)
        assert (hit.ok, hit.used) == (True, i + 1)
    refused = await state.window_hit("rpm:key_1", 1, 5, W, now)
    assert refused.ok is False
    assert refused.used == 5
    # The 5 hits become the previous window at START + 60 and weigh 5 * (1 - elapsed / 60):
    # one more fits once that is <= 4, i.e. 12 s into the next window: 42 s from now.
    assert refused.retry_after_s == pytest.approx(42.0)
    assert not (await state.window_hit("rpm:key_1", 1, 5, W, now + 41.9)).ok
    late = await state.window_hit("rpm:key_1", 1, 5, W, now + 42.001)
    assert late.ok
    assert late.used == pytest.approx(5.0, abs=1e-3)
    # Another name is independent.
    assert (await state.window_hit("rpm:key_2", 1, 5, W, now)).ok


async def test_window_sliding_weight_across_the_boundary(state: State) -> None:
    name = "rpm:key_1"
    for _ in range(4):
        assert (await state.window_hit(name, 1, 5, W, START + 10)).ok
    # 15 s into the next window the previous one counts 4 * 0.75 = 3.
    t = START + W + 15
    assert await state.window_used(name, W, t) == pytest.approx(3.0)
    assert (await state.window_hit(name, 1, 5, W, t)).ok  # 4
    assert (await state.window_hit(name, 1, 5, W, t)).ok  # 5
    refused = await state.window_hit(name, 1, 5, W, t)
    assert refused.ok is False
    assert refused.used == pytest.approx(5.0)
    # Needs 4 * w <= 5 - 2 - 1, w = 0.5: 15 s later (30 s into the window).
    assert refused.retry_after_s == pytest.approx(15.0)
    assert (await state.window_hit(name, 1, 5, W, t + 15.001)).ok
    # Two windows on, the 3 hits of the last window weigh 3 * (55 / 60).
    assert await state.window_used(name, W, START + 2 * W + 5) == pytest.approx(3 * 55 / 60)
    assert await state.window_used(name, W, START + 3 * W + 5) == 0.0


async def test_window_hit_larger_than_the_limit_never_fits(state: State) -> None:
    hit = await state.window_hit("tpm:key_1", 1000, 500, W, START)
    assert hit.ok is False
    assert hit.retry_after_s == 2 * W
    assert await state.window_used("tpm:key_1", W, START) == 0.0


async def test_window_add_and_used(state: State) -> None:
    name = "tpm:key_1"
    assert await state.window_used(name, W, START + 1) == 0.0
    await state.window_add(name, 120, W, START + 1)
    await state.window_add(name, 30.5, W, START + 2)
    assert await state.window_used(name, W, START + 3) == 150.5
    # Added tokens count against later hits.
    assert not (await state.window_hit(name, 50, 200, W, START + 3)).ok
    hit = await state.window_hit(name, 49.5, 200, W, START + 3)
    assert (hit.ok, hit.used) == (True, 200.0)
    # Half way through the next window: half of it.
    assert await state.window_used(name, W, START + W + 30) == pytest.approx(100.0)


async def test_concurrent_window_hits_admit_exactly_the_limit(state: State) -> None:
    async with replicas(state, 3) as clients:
        hits = await asyncio.gather(
            *(
                clients[i % len(clients)].window_hit("rpm:key_1", 1, 50, W, START + 5)
                for i in range(300)
            )
        )
    assert sum(h.ok for h in hits) == 50
    assert await state.window_used("rpm:key_1", W, START + 5) == 50


# -- pacing --------------------------------------------------------------------------------------


async def test_pacing_compare_and_set(state: State) -> None:
    assert await state.pacing_get("key:key_1") is None
    first = PacingState(1.25, -0.5, T0 + 0.123456, {"spend_rate": 0.001})
    assert await state.pacing_update("key:key_1", 1.0, first) is False  # nothing stored: 0.0
    assert await state.pacing_update("key:key_1", 0.0, first) is True
    assert await state.pacing_get("key:key_1") == first

    async with replicas(state, 2) as clients:
        a = PacingState(1.5, 0.1, T0 + 5.5, {"who": 1.0})
        b = PacingState(0.75, 0.2, T0 + 5.25, {"who": 2.0})
        won = await asyncio.gather(
            clients[0].pacing_update("key:key_1", first.updated_at, a),
            clients[-1].pacing_update("key:key_1", first.updated_at, b),
        )
    assert sorted(won) == [False, True]
    assert await state.pacing_get("key:key_1") == (a if won[0] else b)
    # A stale updater loses; one that read the current state wins.
    current = await state.pacing_get("key:key_1")
    assert current is not None
    assert await state.pacing_update("key:key_1", first.updated_at, first) is False
    assert await state.pacing_update("key:key_1", current.updated_at, first) is True
    assert await state.pacing_get("key:key_2") is None


# -- opening the stores --------------------------------------------------------------------------


async def test_open_state_picks_the_store() -> None:
    for url in (None, "memory"):
        s = await open_state(url)
        assert isinstance(s, MemoryState)
        await s.aclose()
    with pytest.raises(ValueError, match="unknown state store URL 'mysql://x'"):
        await open_state("mysql://x")


async def test_open_state_names_an_unreachable_redis() -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"redis://user:secret@127.0.0.1:{port}/0"
    with pytest.raises(StateUnavailable) as err:
        await open_state(url)
    assert f"redis://user:***@127.0.0.1:{port}/0" in str(err.value)
    assert "secret" not in str(err.value)


# -- MemoryState persistence ---------------------------------------------------------------------


async def test_memory_state_persists_keys_and_spend(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    first = MemoryState(path)
    k1, k2 = make_key(1), make_key(2)
    await first.put_key(k1)
    await first.put_key(k2)
    await first.revoke_key(k2.id, T0 + 5)
    assert (await first.reserve("key:k1:2027-01", "r1", 0.5, 1.0, 60, T0)).ok
    await first.settle("key:k1:2027-01", "r1", 0.333333)
    await first.settle("team:search:2027-01", "r1", 1.5)
    pacing = PacingState(1.1, 0.2, T0 + 1, {"x": 1.0})
    assert await first.pacing_update("key:k1", 0.0, pacing)
    assert (await first.reserve("key:k1:2027-01", "open", 0.1, 1.0, 60, T0)).ok
    await first.aclose()

    second = MemoryState(path)
    try:
        assert await second.has_keys() is True
        assert await second.list_keys() == [k1, dataclasses.replace(k2, revoked_at=T0 + 5)]
        assert await second.key_by_hash(k1.secret_hash) == k1
        # Spend survives; open reservations do not (they are seconds old at most).
        assert await second.budget_usage("key:k1:2027-01", T0) == (0.333333, 0.0)
        assert await second.budget_usage("team:search:2027-01", T0) == (1.5, 0.0)
        assert await second.pacing_get("key:k1") == pacing
        assert await second.settle("key:k1:2027-01", "r2", 0.000001) == 0.333334
    finally:
        await second.aclose()


async def test_memory_state_persists_online_statistics(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    first = MemoryState(path)
    await first.stats_update("online:auto", ["3|m", "*|m"], 0.5, 0.9, time.time())
    await first.stats_update("online:auto", ["3|m", "*|m"], -0.25, 0.9, time.time())
    await first.stats_update("online:old", ["1|m"], 1.0, 0.9, time.time() - 31 * 86400)
    learned = await first.stats_read("online:auto")
    await first.aclose()

    second = MemoryState(path)
    try:
        assert await second.stats_read("online:auto") == learned
        # A table nobody updated for 30 days is gone, as Redis's TTL drops it.
        assert await second.stats_read("online:old") == {}
    finally:
        await second.aclose()


async def test_memory_state_snapshots_spend_periodically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(memory_module, "SNAPSHOT_INTERVAL_S", 0.05)
    path = tmp_path / "state.sqlite"
    store = MemoryState(path)
    try:
        await store.put_key(make_key(1))
        # Keys are written at once, before any snapshot.
        with sqlite3.connect(path) as db:
            rows = db.execute("SELECT id, data FROM keys").fetchall()
        assert [r[0] for r in rows] == ["key_00000001"]
        assert json.loads(json.loads(rows[0][1])["budget_usd"]) == 12.5

        await store.settle("key:k1:2027-01", "r1", 0.25)
        for _ in range(100):  # the snapshot runs in the background; wait up to 2 s
            await asyncio.sleep(0.02)
            with sqlite3.connect(path) as db:
                rows = db.execute("SELECT budget, micros FROM spend").fetchall()
            if rows:
                break
        assert rows == [("key:k1:2027-01", 250_000)]
        # As after a crash: a second process reading the file sees the snapshot.
        reader = MemoryState(path)
        assert await reader.budget_usage("key:k1:2027-01", T0) == (0.25, 0.0)
        await reader.aclose()
    finally:
        await store.aclose()
