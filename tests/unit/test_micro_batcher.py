"""The learned route's micro-batcher: requests that arrive while a batch is scored are scored
together in the next call, each waiter gets its own result, and an error reaches them all."""

from __future__ import annotations

import asyncio
import threading

import pytest

from routers.serving.batcher import MicroBatcher


class Scorer:
    """Doubles its inputs; records each call's batch. The first call waits until released, so
    the requests sent meanwhile must queue into the next batch."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.release = threading.Event()

    def __call__(self, items: list[int]) -> list[int]:
        if not self.calls:
            self.release.wait(5)
        self.calls.append(list(items))
        return [2 * i for i in items]


async def test_concurrent_requests_share_one_call_and_get_their_own_results() -> None:
    scorer = Scorer()
    batcher: MicroBatcher[int, int] = MicroBatcher(scorer, max_batch=32)
    first = asyncio.create_task(batcher.submit(0))
    await asyncio.sleep(0.05)  # the first batch is being scored, alone
    rest = [asyncio.create_task(batcher.submit(i)) for i in range(1, 21)]
    await asyncio.sleep(0.05)
    scorer.release.set()
    assert await first == 0
    assert await asyncio.gather(*rest) == [2 * i for i in range(1, 21)]
    assert scorer.calls == [[0], list(range(1, 21))]  # 21 requests, two calls


async def test_batches_are_capped() -> None:
    scorer = Scorer()
    batcher: MicroBatcher[int, int] = MicroBatcher(scorer, max_batch=8)
    first = asyncio.create_task(batcher.submit(0))
    await asyncio.sleep(0.05)
    rest = [asyncio.create_task(batcher.submit(i)) for i in range(1, 21)]
    await asyncio.sleep(0.05)
    scorer.release.set()
    await first
    assert await asyncio.gather(*rest) == [2 * i for i in range(1, 21)]
    assert [len(c) for c in scorer.calls] == [1, 8, 8, 4]


async def test_an_error_reaches_every_waiter_and_the_batcher_goes_on() -> None:
    calls: list[list[str]] = []

    def score(items: list[str]) -> list[str]:
        calls.append(items)
        if "bad" in items:
            raise RuntimeError("scoring failed")
        return [s.upper() for s in items]

    batcher: MicroBatcher[str, str] = MicroBatcher(score)
    results = await asyncio.gather(
        batcher.submit("bad"), batcher.submit("also"), return_exceptions=True
    )
    assert all(isinstance(r, RuntimeError) for r in results)
    assert await batcher.submit("fine") == "FINE"
    with pytest.raises(RuntimeError, match="scoring failed"):
        await batcher.submit("bad")
