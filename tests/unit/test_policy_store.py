"""The State contract for published policies (`policy_publish`, `policy_latest_id`, `policy_get`,
`policy_history`, `policy_report(s)`, `policy_replicas`) on MemoryState; the same tests run on a
real redis-server in tests/system/test_state_redis.py."""

from __future__ import annotations

import asyncio

from gateway.state import PolicyRecord, PolicyReport, State

T0 = 1_800_000_000.0


def record(n: int, author: str = "ana") -> PolicyRecord:
    return PolicyRecord(0, f"version: 1 # {n}\n", f"hash{n:08d}", author, T0 + n, f"note {n}")


async def test_policy_publish_numbers_versions_and_keeps_them(state: State) -> None:
    assert await state.policy_latest_id() == 0
    assert await state.policy_get(1) is None
    assert await state.policy_history() == []
    assert [await state.policy_publish(record(n)) for n in (1, 2, 3)] == [1, 2, 3]
    assert await state.policy_latest_id() == 3
    got = await state.policy_get(2)
    assert got == PolicyRecord(2, "version: 1 # 2\n", "hash00000002", "ana", T0 + 2, "note 2")
    assert [r.id for r in await state.policy_history(2)] == [3, 2]
    assert [r.id for r in await state.policy_history()] == [3, 2, 1]
    assert await state.policy_history(0) == []


async def test_policy_publish_is_atomic_under_concurrency(state: State) -> None:
    ids = await asyncio.gather(*(state.policy_publish(record(n)) for n in range(1, 41)))
    assert sorted(ids) == list(range(1, 41))  # no id twice, none skipped
    for policy_id in ids[:5]:
        got = await state.policy_get(policy_id)
        assert got is not None and got.id == policy_id


async def test_policy_reports_per_version_and_per_replica(state: State) -> None:
    await state.policy_publish(record(1))
    await state.policy_publish(record(2))
    a1 = PolicyReport("a:8080", 1, True, None, T0 + 1, 1, "hash00000001")
    b1 = PolicyReport("b:8080", 1, True, None, T0 + 1, 1, "hash00000001")
    b2 = PolicyReport("b:8080", 2, False, "policy.yaml:4:5 routes.x: no", T0 + 2, 1, "hash00000001")
    for report in (a1, b1, b2):
        await state.policy_report(report)
    assert await state.policy_reports(1) == [a1, b1]
    assert await state.policy_reports(2) == [b2]
    assert await state.policy_reports(9) == []
    # Each replica's latest word: b rejected v2 and still serves v1.
    assert await state.policy_replicas() == [a1, b2]
    a2 = PolicyReport("a:8080", 2, True, None, T0 + 3, 2, "hash00000002")
    await state.policy_report(a2)
    assert await state.policy_replicas() == [a2, b2]
    assert await state.policy_reports(2) == [a2, b2]
