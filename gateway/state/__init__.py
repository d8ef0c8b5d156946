"""Shared state (keys, budgets, rate windows, pacing) behind one interface: see `base`."""

from __future__ import annotations

from pathlib import Path

from gateway.state.base import (
    PacingState,
    PolicyRecord,
    PolicyReport,
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
    "PolicyRecord",
    "PolicyReport",
    "RedisState",
    "Reservation",
    "RunningStat",
    "State",
    "StateUnavailable",
    "VirtualKey",
    "WindowResult",
    "from_micros",
    "is_memory_url",
    "open_state",
    "to_micros",
]


def is_memory_url(url: str | None) -> bool:
    """True for the in-process store: one process, whose policy file is the source."""
    return url is None or url.strip() in ("", "memory", "memory://")


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
    if is_memory_url(url):
        return MemoryState(memory_path)
    assert url is not None
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
