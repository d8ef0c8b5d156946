"""Shared state (keys, budgets, rate windows, pacing) behind one interface: see `base`."""

from __future__ import annotations

from pathlib import Path

from gateway.state.base import (
    PacingState,
    Reservation,
    RunningStat,
    State,
    StateUnavailable,
    VirtualKey,
    WindowResult,
    from_micros,
    to_micros,
)
from gateway.state.memory import MemoryState
from gateway.state.redis_store import RedisState, redact_url

__all__ = [
    "MemoryState",
    "PacingState",
    "RedisState",
    "Reservation",
    "RunningStat",
    "State",
    "StateUnavailable",
    "VirtualKey",
    "WindowResult",
    "from_micros",
    "open_state",
    "to_micros",
]


async def open_state(
    url: str | None,
    *,
    memory_path: Path | None = None,
    prefix: str = "routegate",
    connect_timeout_s: float = 3.0,
    timeout_s: float = 2.0,
) -> State:
    """The store `url` names: None or "memory" -> in-process (persisted to `memory_path` when
    given); "redis://..." or "rediss://..." -> Redis, checked with a PING so a wrong URL fails at
    start-up rather than on the first request."""
    if url is None or url.strip() in ("", "memory", "memory://"):
        return MemoryState(memory_path)
    if url.startswith(("redis://", "rediss://", "unix://")):
        state = RedisState(
            url, prefix=prefix, connect_timeout_s=connect_timeout_s, timeout_s=timeout_s
        )
        try:
            await state.ping()
        except StateUnavailable:
            await state.aclose()
            raise
        return state
    raise ValueError(f"unknown state store URL {redact_url(url)!r}: use 'memory' or a redis:// URL")
