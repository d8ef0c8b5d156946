"""What every request-log store answers when read: the reports, the dashboard, policy
simulation, feedback lookups and learned pacing plans all read through this interface."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import orjson


class LogError(Exception):
    """A log that cannot be read (missing, not a log, unreachable); the message is for users."""


@dataclass(frozen=True, slots=True)
class Traffic:
    """The dashboard's window. cells: (model, bucket, requests, errors, cost, cache hits, api,
    replica) per group; latencies: (model, replica, latency_ms), newest first."""

    cells: list[tuple[Any, ...]]
    latencies: list[tuple[Any, ...]]


class LogReader(Protocol):
    location: str  # the file or URL (no password), for messages

    def check(self) -> None:
        """Raise LogError unless this is a readable request log."""
        ...

    def count(self, since: float | None = None, until: float | None = None) -> int: ...

    def batches(
        self, since: float | None = None, until: float | None = None, size: int = 10_000
    ) -> Iterator[list[dict[str, Any]]]:
        """Rows in time order, `size` at a time, JSON columns decoded."""
        ...

    def feedback(self) -> list[dict[str, Any]]:
        """All feedback rows, oldest first ([] for a log without feedback)."""
        ...

    def find(self, request_id: str) -> dict[str, Any] | None: ...

    def shape(
        self, column: str, owner: str, start: float, end: float, slices: int
    ) -> list[tuple[int, float, int]]:
        """(slice, spend, requests) of `owner` in `column` over [start, end)."""
        ...

    def traffic(self, since: float, bucket_s: float, latency_sample: int) -> Traffic: ...


def decode_row(columns: list[str], row: tuple[Any, ...]) -> dict[str, Any]:
    """A row as a dict, its JSON columns decoded (the same for every store)."""
    out = dict(zip(columns, row, strict=True))
    out["fallbacks"] = orjson.loads(out.get("fallbacks") or "[]")
    extra = orjson.loads(out.get("extra") or "{}")
    out["extra"] = extra if isinstance(extra, dict) else {}
    out.setdefault("team", None)  # a log written before teams existed
    out.setdefault("replica", None)  # ... or before replicas
    out.setdefault("cached_tokens", 0)  # ... or before cached tokens were counted
    return out
