"""The spool: rows Postgres could not take yet, in an append-only local file, in order.

One JSON line per row, `["r", [columns...]]` (a request) or `["f", [columns...]]` (feedback).
A batch is one write and one fsync, so a row that reached the spool survives a crash; the file
is truncated only after its rows were committed to Postgres. A crash in the middle of a write
leaves a torn last line: it is cut off at open (it was never reported stored), so later
appends start on a line of their own.

One process owns a spool: it holds an exclusive lock on the file while open, so two processes
never interleave their rows in one file (the Postgres sink then takes a file of its own beside
it, and replays files that no live process holds).
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import orjson

log = logging.getLogger("routegate.log")

REQUEST, FEEDBACK = "r", "f"


class SpoolError(Exception):
    """A spool file that cannot be used; the message names it."""


@dataclass(frozen=True, slots=True)
class SpoolEntry:
    kind: str  # REQUEST | FEEDBACK
    row: tuple[Any, ...]


class Spool:
    """An append-only JSONL file of rows, with the count of rows in it (`depth`)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file: BinaryIO = self.path.open("a+b")
        except OSError as exc:
            raise SpoolError(f"{self.path}: cannot open the log spool: {exc.strerror}") from None
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._file.close()
            raise SpoolError(
                f"{self.path}: another process holds this log spool; give each gateway "
                "its own (--log-spool)"
            ) from None
        self.depth = self._recover()

    def _recover(self) -> int:
        """Cut a torn last line off; the number of whole lines left."""
        self._file.seek(0)
        data = self._file.read()
        end = data.rfind(b"\n") + 1
        if end != len(data):
            log.warning(
                "%s: dropped a torn last line (%d bytes) written by a process that died "
                "mid-write; its rows were never reported stored",
                self.path, len(data) - end,
            )  # fmt: skip
            self._file.truncate(end)
            os.fsync(self._file.fileno())
        return data.count(b"\n", 0, end)

    def append(self, entries: list[SpoolEntry]) -> None:
        """Add the rows at the end, on disk (fsync'd) before this returns."""
        if not entries:
            return
        data = b"".join(orjson.dumps([e.kind, e.row]) + b"\n" for e in entries)
        self._file.write(data)
        self._file.flush()
        os.fsync(self._file.fileno())
        self.depth += len(entries)

    def batches(self, size: int = 1000) -> Iterator[list[SpoolEntry]]:
        """The rows in the order they were appended, `size` at a time."""
        self._file.flush()
        with self.path.open("rb") as f:
            batch: list[SpoolEntry] = []
            for number, line in enumerate(f, 1):
                try:
                    kind, row = orjson.loads(line)
                except (orjson.JSONDecodeError, ValueError, TypeError):
                    # Never written by append(): say so, and keep the rows after it.
                    log.error("%s:%d: not a spooled row, skipped: %r", self.path, number, line)
                    continue
                batch.append(SpoolEntry(kind, tuple(row)))
                if len(batch) >= size:
                    yield batch
                    batch = []
            if batch:
                yield batch

    def find(self, kind: str, key: str) -> tuple[Any, ...] | None:
        """The last row of `kind` whose first column is `key` (a request id), or None. Safe
        beside the writer's appends: a line it is still writing is not a row yet."""
        found = None
        needle = orjson.dumps(key)
        with self.path.open("rb") as f:
            for line in f:
                if needle not in line:  # most lines: no parse
                    continue
                try:
                    got_kind, row = orjson.loads(line)
                except (orjson.JSONDecodeError, ValueError, TypeError):
                    continue
                if got_kind == kind and row and row[0] == key:
                    found = tuple(row)
        return found

    def clear(self) -> None:
        """Empty the file (after its rows were committed elsewhere)."""
        self._file.truncate(0)
        self._file.flush()
        os.fsync(self._file.fileno())
        self.depth = 0

    def close(self) -> None:
        self._file.close()  # closing the file releases the lock
