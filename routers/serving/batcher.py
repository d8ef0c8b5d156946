"""Micro-batching for heavy router scoring: requests that arrive while a batch is being scored
are scored together in the next one, in a worker thread, off the event loop.

An idle batcher adds no wait: a lone request starts a batch of one at once. Under load, batches
grow by themselves, so the embedding model runs fewer, larger calls.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")


class MicroBatcher(Generic[In, Out]):
    def __init__(self, score: Callable[[list[In]], list[Out]], max_batch: int = 32):
        self._score = score
        self._max_batch = max_batch
        self._pending: list[tuple[In, asyncio.Future[Out]]] = []
        self._running = False
        self._task: asyncio.Task[None] | None = None  # held so it is not garbage-collected

    async def submit(self, item: In) -> Out:
        future: asyncio.Future[Out] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if not self._running:
            self._running = True
            self._task = asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                try:
                    results = await asyncio.to_thread(self._score, [item for item, _ in batch])
                except Exception as exc:  # every waiter gets the error, none hangs
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            self._running = False
