"""Read request-log rows in batches, so a large log never sits in memory twice."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

BATCH_ROWS = 10_000


class ReportError(Exception):
    """A log or option the report cannot use; the message is meant for the user."""


def _connect(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise ReportError(f"{path}: no such request log")
    db = sqlite3.connect(path)
    try:
        found = db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'requests'"
        ).fetchone()
    except sqlite3.DatabaseError as exc:
        db.close()
        raise ReportError(f"{path}: not a request log ({exc})") from None
    if found is None:
        db.close()
        raise ReportError(f"{path}: not a request log (no requests table)")
    return db


def _where(since: float | None, until: float | None) -> tuple[str, list[float]]:
    clauses, args = [], []
    if since is not None:
        clauses.append("ts >= ?")
        args.append(since)
    if until is not None:
        clauses.append("ts < ?")
        args.append(until)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), args


def count_rows(path: Path, since: float | None = None, until: float | None = None) -> int:
    db = _connect(path)
    try:
        where, args = _where(since, until)
        return int(db.execute(f"SELECT COUNT(*) FROM requests{where}", args).fetchone()[0])
    finally:
        db.close()


def _decode(columns: list[str], row: tuple[Any, ...]) -> dict[str, Any]:
    out = dict(zip(columns, row, strict=True))
    out["fallbacks"] = orjson.loads(out.get("fallbacks") or "[]")
    extra = orjson.loads(out.get("extra") or "{}")
    out["extra"] = extra if isinstance(extra, dict) else {}
    out.setdefault("team", None)  # a log written before teams existed
    return out


def iter_batches(
    path: Path,
    since: float | None = None,
    until: float | None = None,
    batch: int = BATCH_ROWS,
) -> Iterator[list[dict[str, Any]]]:
    """Rows in time order, `batch` at a time, JSON columns decoded (as `read_records` gives)."""
    db = _connect(path)
    try:
        where, args = _where(since, until)
        cursor = db.execute(f"SELECT * FROM requests{where} ORDER BY ts", args)
        columns = [d[0] for d in cursor.description]
        while rows := cursor.fetchmany(batch):
            yield [_decode(columns, r) for r in rows]
    finally:
        db.close()
