"""The LogReader of a SQLite request log (the default store): read-only connections."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gateway.accounting.log_store.reader import LogError, Traffic, decode_row
from gateway.accounting.request_log import find_record, read_feedback


class SqliteReader:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.location = str(self.path)

    def _connect(self) -> sqlite3.Connection:
        if not self.path.is_file():
            raise LogError(f"{self.path}: no such request log")
        db = sqlite3.connect(self.path.resolve().as_uri() + "?mode=ro", uri=True, timeout=2)
        try:
            found = db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'requests'"
            ).fetchone()
        except sqlite3.DatabaseError as exc:
            db.close()
            raise LogError(f"{self.path}: not a request log ({exc})") from None
        if found is None:
            db.close()
            raise LogError(f"{self.path}: not a request log (no requests table)")
        return db

    def check(self) -> None:
        self._connect().close()

    def count(self, since: float | None = None, until: float | None = None) -> int:
        db = self._connect()
        try:
            where, args = _where(since, until)
            return int(db.execute(f"SELECT COUNT(*) FROM requests{where}", args).fetchone()[0])
        finally:
            db.close()

    def batches(
        self, since: float | None = None, until: float | None = None, size: int = 10_000
    ) -> Iterator[list[dict[str, Any]]]:
        db = self._connect()
        try:
            where, args = _where(since, until)
            cursor = db.execute(f"SELECT * FROM requests{where} ORDER BY ts, request_id", args)
            columns = [d[0] for d in cursor.description]
            while rows := cursor.fetchmany(size):
                yield [decode_row(columns, r) for r in rows]
        finally:
            db.close()

    def feedback(self) -> list[dict[str, Any]]:
        return read_feedback(self.path) if self.path.is_file() else []

    def find(self, request_id: str) -> dict[str, Any] | None:
        if not self.path.is_file():
            return None
        row = find_record(self.path, request_id)
        if row is not None:
            row.setdefault("replica", None)
            row.setdefault("cached_tokens", 0)
        return row

    def shape(
        self, column: str, owner: str, start: float, end: float, slices: int
    ) -> list[tuple[int, float, int]]:
        assert column in ("route", "api_key_id")
        if not self.path.exists():
            return []
        db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        try:
            rows = db.execute(
                f"SELECT CAST((ts - ?) * ? / (? - ?) AS INTEGER) AS slice, SUM(cost_usd), "
                f"COUNT(*) FROM requests WHERE ts >= ? AND ts < ? AND {column} = ? GROUP BY slice",
                (start, slices, end, start, start, end, owner),
            ).fetchall()
        except sqlite3.OperationalError:  # no table yet
            return []
        finally:
            db.close()
        return [(int(i), float(c or 0.0), int(n)) for i, c, n in rows]

    def traffic(self, since: float, bucket_s: float, latency_sample: int) -> Traffic:
        if not self.path.exists():
            return Traffic([], [])
        db = sqlite3.connect(self.path.resolve().as_uri() + "?mode=ro", uri=True, timeout=2)
        try:
            # One scan of the window gives the per-model, per-API and per-replica totals and
            # the timeline together. Rows written before the api column: the endpoint kind
            # was the API. The replica column may be missing from an old log: then unnamed.
            columns = {row[1] for row in db.execute("PRAGMA table_info(requests)")}
            replica = "COALESCE(replica, '(unnamed)')" if "replica" in columns else "'(unnamed)'"
            cells = db.execute(
                "SELECT COALESCE(model, '(none)'), CAST((ts - ?) / ? AS INTEGER), COUNT(*),"
                " SUM(status >= 400), SUM(cost_usd),"
                " SUM(COALESCE(json_extract(extra, '$.cache.hit'), 0) = 1),"
                f" COALESCE(api, endpoint_kind), {replica}"
                " FROM requests WHERE ts >= ? GROUP BY 1, 2, 7, 8",
                (since, bucket_s, since),
            ).fetchall()
            latencies = db.execute(
                f"SELECT COALESCE(model, '(none)'), {replica}, latency_ms FROM requests"
                " WHERE ts >= ? AND status < 400 AND latency_ms IS NOT NULL"
                " ORDER BY ts DESC LIMIT ?",
                (since, latency_sample),
            ).fetchall()
        except sqlite3.OperationalError:  # the log exists but the writer has not made the table
            return Traffic([], [])
        finally:
            db.close()
        return Traffic(cells, latencies)


def _where(since: float | None, until: float | None) -> tuple[str, list[float]]:
    clauses, args = [], []
    if since is not None:
        clauses.append("ts >= ?")
        args.append(since)
    if until is not None:
        clauses.append("ts < ?")
        args.append(until)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), args
