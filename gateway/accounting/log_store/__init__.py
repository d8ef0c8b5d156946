"""Where the request log lives: a SQLite file (the default) or Postgres (`postgresql://...`),
behind one writer (RequestLog with a sink) and one reader interface (LogReader).

`open_request_log(location, ...)` makes the writer, `open_reader(location)` the reader; the
rest of the gateway names only a location (a path or a URL) and these two.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from gateway.accounting.log_store.reader import LogError, LogReader, Traffic, decode_row
from gateway.accounting.log_store.spool import Spool, SpoolEntry, SpoolError
from gateway.accounting.log_store.sqlite import SqliteReader
from gateway.accounting.request_log import RequestLog

__all__ = [
    "LogError",
    "LogReader",
    "Spool",
    "SpoolEntry",
    "SpoolError",
    "SqliteReader",
    "Traffic",
    "decode_row",
    "default_spool_path",
    "is_postgres_url",
    "open_reader",
    "open_request_log",
    "safe_location",
]

SCHEMES = ("postgresql://", "postgres://")
SPOOL_NAME = "routegate-log-spool.jsonl"
WINDOW_S = 0.05  # the writer's batch window (RequestLog's default)
# A durable log's answers wait for their batch: a short window, so the wait stays short.
DURABLE_WINDOW_S = 0.005


def is_postgres_url(location: str | Path) -> bool:
    return isinstance(location, str) and location.startswith(SCHEMES)


def safe_location(location: str | Path) -> str:
    """The location for messages: a URL without its password."""
    if is_postgres_url(location):
        from gateway.accounting.log_store.postgres import safe_url

        return safe_url(str(location))
    return str(location)


def default_spool_path(beside: Path, replica: str | None) -> Path:
    """The spool's default file: beside `beside` (the state file), one per replica name, so
    replicas sharing a folder never share a spool."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", replica) if replica else ""
    return beside.parent / (
        f"routegate-log-spool-{name}.jsonl" if name else "routegate-log-spool.jsonl"
    )


def open_request_log(
    location: str | Path,
    *,
    replica: str | None = None,
    spool_path: Path | None = None,
    counters: Any = None,
    batch: int = 512,
    window_s: float | None = None,
    durable: bool = False,
) -> RequestLog:
    """The writer for a SQLite path or a Postgres URL. Postgres needs `spool_path` (default:
    beside the current folder); `counters` (gateway.metrics.Metrics) counts spooled rows.
    `durable`: each answer waits for its row (RequestLog.stored), over a shorter window."""
    window = window_s if window_s is not None else DURABLE_WINDOW_S if durable else WINDOW_S
    options: dict[str, Any] = {"batch": batch, "window_s": window, "replica": replica}
    if is_postgres_url(location):
        from gateway.accounting.log_store.postgres import PostgresSink

        spool = spool_path or default_spool_path(Path("routegate-state.sqlite"), replica)
        sink = PostgresSink(str(location), spool, counters)
        return RequestLog(sink, durable=durable, **options)
    return RequestLog(Path(location), durable=durable, **options)


def open_reader(location: str | Path) -> LogReader:
    """The reader for a SQLite path or a Postgres URL (connects only when read)."""
    if is_postgres_url(location):
        from gateway.accounting.log_store.postgres import PostgresReader

        return PostgresReader(str(location))
    return SqliteReader(location)
