"""Every policy version the gateway served, with who applied it and when, in SQLite.

Small and rarely written (once per apply), so each call opens its own connection.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS policy_versions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- shown as vN
    ts REAL NOT NULL,                      -- unix time it went live
    who TEXT NOT NULL,                     -- the name typed in the form, or "file"
    client TEXT NOT NULL DEFAULT '',       -- the applying client's address
    note TEXT NOT NULL DEFAULT '',         -- apply | rollback to vN | loaded from file
    version TEXT NOT NULL,                 -- Runtime.version: hash of the text
    text TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class PolicyVersion:
    id: int
    ts: float
    who: str
    client: str
    note: str
    version: str
    text: str

    def summary(self) -> dict[str, Any]:
        """Without the text, for listings."""
        out = asdict(self)
        del out["text"]
        return out


class PolicyHistory:
    def __init__(self, path: Path):
        self.path = path
        self._ready = False  # the file is made on first use: an unused dashboard leaves no file

    def _db(self) -> sqlite3.Connection:
        if not self._ready:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with sqlite3.connect(self.path, timeout=5) as db:
                db.executescript(SCHEMA)
            self._ready = True
        return sqlite3.connect(self.path, timeout=5)

    def add(
        self, text: str, version: str, who: str, client: str, note: str, ts: float | None = None
    ) -> PolicyVersion:
        ts = time.time() if ts is None else ts
        db = self._db()
        try:
            with db:
                cur = db.execute(
                    "INSERT INTO policy_versions (ts, who, client, note, version, text)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (ts, who, client, note, version, text),
                )
            row_id = cur.lastrowid
        finally:
            db.close()
        assert row_id is not None
        return PolicyVersion(row_id, ts, who, client, note, version, text)

    def _select(self, where: str, args: tuple[Any, ...]) -> list[PolicyVersion]:
        db = self._db()
        try:
            rows = db.execute(
                "SELECT id, ts, who, client, note, version, text FROM policy_versions " + where,
                args,
            ).fetchall()
        finally:
            db.close()
        return [PolicyVersion(*row) for row in rows]

    def get(self, version_id: int) -> PolicyVersion | None:
        found = self._select("WHERE id = ?", (version_id,))
        return found[0] if found else None

    def latest(self) -> PolicyVersion | None:
        found = self._select("ORDER BY id DESC LIMIT 1", ())
        return found[0] if found else None

    def recent(self, limit: int = 50) -> list[PolicyVersion]:
        return self._select("ORDER BY id DESC LIMIT ?", (limit,))
