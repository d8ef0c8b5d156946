"""The State contract for learning from feedback (claims and discounted running statistics),
on MemoryState here and on a real redis-server in tests/system/test_state_redis.py."""

from __future__ import annotations

import math

import pytest

from gateway.state import RunningStat, State

T0 = 1_800_000_000.0


async def test_a_claim_is_granted_once_until_it_expires(state: State) -> None:
    assert await state.claim_once("fb:rg-1:user", 60, T0)
    assert not await state.claim_once("fb:rg-1:user", 60, T0 + 1)
    assert await state.claim_once("fb:rg-2:user", 60, T0 + 1)


async def test_running_stats_discount_old_values_the_same_way_in_every_store(
    state: State,
) -> None:
    assert await state.stats_read("online:none") == {}
    expected = RunningStat()
    for i, value in enumerate([1.0, 0.0, 0.25, -0.5]):
        await state.stats_update("online:r", ["3|m"], value, 0.9, T0 + i)
        expected = expected.updated(value, 0.9, T0 + i)
    await state.stats_update("online:r", ["*|m", "other|m"], 2.0, 0.9, T0)
    cells = await state.stats_read("online:r")
    assert set(cells) == {"3|m", "*|m", "other|m"}
    got = cells["3|m"]
    assert got.weight == pytest.approx(expected.weight, rel=1e-12)
    assert got.total == pytest.approx(expected.total, rel=1e-12)
    assert got.total_sq == pytest.approx(expected.total_sq, rel=1e-12)
    assert got.updated_at == pytest.approx(T0 + 3)
    # weight = 1 + .9 + .81 + .729; the newest value counts most
    assert got.weight == pytest.approx(1 + 0.9 + 0.81 + 0.729)
    assert got.mean == pytest.approx((1 * 0.729 + 0 + 0.25 * 0.9 - 0.5) / got.weight)
    assert math.isclose(cells["*|m"].mean, 2.0)
