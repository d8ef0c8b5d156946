"""Read request-log rows in batches, so a large log never sits in memory twice. The log is a
SQLite path or a Postgres URL (gateway.accounting.log_store reads either)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gateway.accounting.log_store import LogError, open_reader

BATCH_ROWS = 10_000


class ReportError(Exception):
    """A log or option the report cannot use; the message is meant for the user."""


def count_rows(log: str | Path, since: float | None = None, until: float | None = None) -> int:
    try:
        return open_reader(log).count(since, until)
    except LogError as exc:
        raise ReportError(str(exc)) from None


def iter_batches(
    log: str | Path,
    since: float | None = None,
    until: float | None = None,
    batch: int = BATCH_ROWS,
) -> Iterator[list[dict[str, Any]]]:
    """Rows in time order, `batch` at a time, JSON columns decoded (as `read_records` gives)."""
    try:
        yield from open_reader(log).batches(since, until, batch)
    except LogError as exc:
        raise ReportError(str(exc)) from None


def read_feedback(log: str | Path) -> list[dict[str, Any]]:
    try:
        return open_reader(log).feedback()
    except LogError as exc:
        raise ReportError(str(exc)) from None
