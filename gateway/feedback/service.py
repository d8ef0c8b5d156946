"""Feedback: find the request, check the caller made it, store the score with the request log
row, and teach the route's online layer once per (request, source, model)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from gateway.accounting.log_store import LogError, LogReader, SqliteReader
from gateway.accounting.request_log import FeedbackRecord, RequestLog
from gateway.errors import ApiError
from gateway.runtime import Runtime
from gateway.state import State, VirtualKey

log = logging.getLogger("routegate.feedback")

CLAIM_TTL_S = 7 * 86400.0  # one learning update per (request, source, model) for a week


@dataclass(slots=True)
class FeedbackService:
    request_log: RequestLog
    state: State
    reader: LogReader | None = None  # None: the SQLite file request_log writes
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def record(
        self,
        runtime: Runtime,
        key: VirtualKey | None,
        request_id: str,
        score: float,
        source: str,
        comment: str | None,
    ) -> bool:
        """Store one explicit feedback; True when it taught an online layer."""
        row = await self._find(request_id)
        # Another key's request reads exactly like an unknown one: nothing leaks.
        if row is None or row["api_key_id"] != (key.id if key is not None else None):
            raise ApiError(
                404, f"No request '{request_id}' made by this key", code="request_not_found",
                param="request_id",
            )  # fmt: skip
        model = row["model"] or ""
        fb = FeedbackRecord(
            request_id, source, score, time.time(), model, row["api_key_id"], comment
        )
        self.request_log.write_feedback(fb)
        return await self.learn(runtime, row["route"], row["extra"].get("online"), fb)

    async def learn(
        self, runtime: Runtime, route: str | None, online: Any, fb: FeedbackRecord
    ) -> bool:
        learner = runtime.learners.get(route) if route else None
        if learner is None or not isinstance(online, dict) or not fb.model:
            return False
        claim = f"feedback:{fb.request_id}:{fb.source}:{fb.model}"
        if not await self.state.claim_once(claim, CLAIM_TTL_S, time.time()):
            return False
        await learner.learn(fb.model, online, fb.score)
        return True

    def learn_later(
        self, runtime: Runtime, route: str | None, online: Any, fb: FeedbackRecord
    ) -> None:
        """The same, as a task of its own: implicit feedback must not wait on the store."""
        self._spawn(self.learn(runtime, route, online, fb))

    async def _find(self, request_id: str) -> dict[str, Any] | None:
        reader = self.reader or SqliteReader(self.request_log.path)
        # Postgres away, or not yet replayed to: the row may wait in the sink's spool.
        spooled = getattr(self.request_log.sink, "find_spooled", None)
        try:
            row = await asyncio.to_thread(reader.find, request_id)
            if row is None:  # perhaps still queued for the writer thread
                await asyncio.to_thread(self.request_log.flush, 2.0)
                row = await asyncio.to_thread(reader.find, request_id)
        except LogError as exc:
            if spooled is not None and (row := await asyncio.to_thread(spooled, request_id)):
                return row
            log.warning("feedback lookup: %s", exc)  # the row may exist: not a 404
            raise ApiError(
                503, "The request log is unavailable; try again", code="request_log_unavailable"
            ) from None
        if row is None and spooled is not None:
            row = await asyncio.to_thread(spooled, request_id)
        return row

    def _spawn(self, coro: Coroutine[Any, Any, bool]) -> None:
        task = asyncio.get_running_loop().create_task(self._logged(coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _logged(coro: Coroutine[Any, Any, bool]) -> None:
        try:
            await coro
        except Exception:
            log.exception("learning from implicit feedback failed")
