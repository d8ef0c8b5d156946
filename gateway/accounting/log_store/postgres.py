"""The request log on Postgres (psycopg 3), shared by every replica of a fleet.

Writes come from the request log's writer thread (never the event loop), one transaction per
batch. A request row is written once whatever happens: `ON CONFLICT (request_id) DO NOTHING`,
so a replayed spool, or a batch whose commit was cut off after Postgres took it, adds nothing.
Feedback keeps the SQLite log's replace semantics (`ON CONFLICT ... DO UPDATE`).

When Postgres cannot be reached, each batch goes to the local spool (gateway/accounting/
log_store/spool.py) instead, and the writer retries the connection with exponential backoff
and jitter (tenacity's schedule). Once connected, the spool is replayed in order before any
new row, then truncated; new rows queue behind it in the spool meanwhile, so order holds.

The schema is versioned migrations (yoyo, the folder migrations/), applied at the first
connection of each process, under an advisory lock so replicas starting together do not race.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import psycopg
import psycopg.conninfo
from tenacity import RetryCallState, wait_exponential, wait_random

from gateway.accounting.log_store.reader import LogError, Traffic, decode_row
from gateway.accounting.log_store.spool import FEEDBACK, REQUEST, Spool, SpoolEntry, SpoolError
from gateway.accounting.request_log import COLUMNS, FEEDBACK_COLUMNS

log = logging.getLogger("routegate.log")

CONNECT_TIMEOUT_S = 3
REPLAY_BATCH = 1000
# Any fixed number: the advisory lock every replica takes around its migrations.
MIGRATION_LOCK = 0x726F757465  # "route"
# Connection lost, refused, timed out, or the server shutting down: spool and retry. Other
# errors are the rows' own (bad data): retrying would never store them.
CONNECTIVITY_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError)

_INSERT = (
    f"INSERT INTO requests ({', '.join(COLUMNS)}) VALUES ({', '.join(['%s'] * len(COLUMNS))}) "
    "ON CONFLICT (request_id) DO NOTHING"
)
_FEEDBACK_INSERT = (
    f"INSERT INTO feedback ({', '.join(FEEDBACK_COLUMNS)}) "
    f"VALUES ({', '.join(['%s'] * len(FEEDBACK_COLUMNS))}) "
    "ON CONFLICT (request_id, source, model) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in ("score", "ts", "api_key_id", "comment"))
)


def safe_url(url: str) -> str:
    """The URL without its password, for messages and /readyz."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def _connect(url: str, autocommit: bool = False) -> psycopg.Connection[Any]:
    return psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT_S, autocommit=autocommit)


def migrate(conn: psycopg.Connection[Any], url: str) -> None:
    """Apply the migrations this version has and the database lacks (yoyo)."""
    from yoyo import get_backend, read_migrations

    migrations = read_migrations(str(files("gateway.accounting.log_store") / "migrations"))
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
    conn.commit()
    try:
        backend = get_backend("postgresql+psycopg://" + url.split("://", 1)[1])
        try:
            with backend.lock():
                backend.apply_migrations(backend.to_apply(migrations))
        finally:
            backend.connection.close()
    finally:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
        conn.commit()


def _own_spool(path: Path) -> Spool:
    """The spool at `path`, or, when another live process holds it (another worker of this
    replica), one of this process's own beside it (PATH-STEM.PID.jsonl)."""
    try:
        return Spool(path)
    except SpoolError:
        own = path.with_name(f"{path.stem}.{os.getpid()}{path.suffix}")
        log.info("request log: %s is another process's; spooling to %s", path, own)
        return Spool(own)


class LogCounters(Protocol):
    """Where the sink counts what it spooled (gateway.metrics.Metrics has these)."""

    def log_spooled(self, rows: int) -> None: ...
    def log_replayed(self, rows: int) -> None: ...
    def log_spool_depth(self, rows: int) -> None: ...


class PostgresSink:
    """A LogSink on Postgres, with the spool for when it is away."""

    def __init__(self, url: str, spool_path: str | Path, counters: LogCounters | None = None):
        self.url = url
        self.location = safe_url(url)
        try:  # a malformed URL fails at start-up, it is not an outage to spool through
            psycopg.conninfo.conninfo_to_dict(url)
        except psycopg.ProgrammingError as exc:
            raise LogError(f"{self.location}: not a usable Postgres URL: {exc}") from None
        self._counters = counters
        self._base_path = Path(spool_path)
        self._spool = _own_spool(self._base_path)
        self._conn: psycopg.Connection[Any] | None = None
        self._migrated = False
        self._failures = 0
        self._next_try = 0.0
        self.spooled_total = 0  # rows this process put in the spool
        self.replayed_total = 0  # rows it replayed from the spool into Postgres
        self.last_error: str | None = None
        # 0.2 s, 0.4 s, ... up to 5 s between tries, each plus up to 0.5 s of jitter, so a
        # fleet's replicas do not all knock at once when Postgres returns.
        self._wait = wait_exponential(multiplier=0.2, max=5.0) + wait_random(0, 0.5)
        if self._spool.depth:
            log.warning(
                "%s: %d rows left in the spool by an earlier process; replaying them first",
                self._spool.path, self._spool.depth,
            )  # fmt: skip
        self._report_depth()
        # At start-up: the schema now, and a leftover spool now, when Postgres answers.
        if self._open():
            self._replay()

    # -- the LogSink protocol (writer thread) -----------------------------------------------

    def store(self, records: list[tuple[Any, ...]], feedback: list[tuple[Any, ...]]) -> None:
        if self._conn is None or self._spool.depth:
            # Away, or older rows still wait: behind them, so the order holds.
            self._to_spool(records, feedback)
            if time.monotonic() >= self._next_try:
                self.tick()
            return
        try:
            self._insert(self._conn, records, feedback)
        except CONNECTIVITY_ERRORS as exc:
            self._lost(exc)
            self._to_spool(records, feedback)
        except psycopg.Error:
            try:
                self._insert_each(records, feedback)
            except CONNECTIVITY_ERRORS as exc:  # rows stored before it stay once (DO NOTHING)
                self._lost(exc)
                self._to_spool(records, feedback)

    def retry_in(self) -> float | None:
        if self._conn is not None and not self._spool.depth:
            return None
        return max(0.0, self._next_try - time.monotonic())

    def tick(self) -> None:
        if time.monotonic() < self._next_try:
            return
        if self._conn is None and not self._open():
            return
        self._replay()

    def status(self) -> dict[str, Any]:
        return {
            "store": "postgres",
            "url": self.location,
            "connected": self._conn is not None,
            "spool": str(self._spool.path),
            "spooled_total": self.spooled_total,
            "replayed_total": self.replayed_total,
            "spool_depth": self._spool.depth,
            "last_error": self.last_error,
        }

    def find_spooled(self, request_id: str) -> dict[str, Any] | None:
        """A request row still waiting in the spool (Postgres away), decoded as a reader's.
        Any thread: it reads the file, never the sink's state."""
        row = self._spool.find(REQUEST, request_id)
        return None if row is None else decode_row(list(COLUMNS), row)

    def close(self) -> None:
        if self._spool.depth:  # one last try, so a clean stop leaves no spool behind
            self._next_try = 0.0
            self.tick()
        if self._spool.depth:
            log.warning(
                "%s: %d rows stay in the spool; the next start replays them",
                self._spool.path, self._spool.depth,
            )  # fmt: skip
        if self._conn is not None:
            self._conn.close()
        self._spool.close()

    # -- internals ---------------------------------------------------------------------------

    def _open(self) -> bool:
        conn: psycopg.Connection[Any] | None = None
        try:
            conn = _connect(self.url)
            if not self._migrated:
                migrate(conn, self.url)
                self._migrated = True
        except Exception as exc:  # unreachable; or yoyo's own errors, a migration that fails
            if conn is not None:
                conn.close()
            self._lost(exc)
            if not isinstance(exc, CONNECTIVITY_ERRORS):
                log.exception("request log: migrating %s failed", self.location)
            return False
        if self._failures:
            log.warning("request log: %s answers again", self.location)
        self._conn = conn
        self._failures = 0
        self.last_error = None
        return True

    def _lost(self, exc: BaseException) -> None:
        """Postgres went away: drop the connection and schedule the next try."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._failures += 1
        state = RetryCallState(None, None, (), {})  # type: ignore[arg-type]
        state.attempt_number = self._failures
        self._next_try = time.monotonic() + self._wait(state)
        self.last_error = str(exc).strip() or type(exc).__name__
        if self._failures == 1:
            log.warning(
                "request log: %s unreachable (%s); spooling to %s",
                self.location, self.last_error, self._spool.path,
            )  # fmt: skip

    def _to_spool(self, records: list[tuple[Any, ...]], feedback: list[tuple[Any, ...]]) -> None:
        entries = [SpoolEntry(REQUEST, r) for r in records]
        entries += [SpoolEntry(FEEDBACK, f) for f in feedback]
        self._spool.append(entries)
        self.spooled_total += len(entries)
        if self._counters is not None:
            self._counters.log_spooled(len(entries))
        self._report_depth()

    def _replay(self) -> None:
        """Orphaned spools, then ours, into Postgres, each in order and truncated once all of
        it is committed."""
        if self._conn is None:
            return
        self._adopt_orphans()
        if self._conn is not None and self._spool.depth and self._replay_spool(self._spool):
            self._report_depth()

    def _replay_spool(self, spool: Spool) -> bool:
        """One spool's rows into Postgres; True when all of them are in (it is truncated)."""
        assert self._conn is not None
        rows = spool.depth
        try:
            for batch in spool.batches(REPLAY_BATCH):
                records = [_current(e.row) for e in batch if e.kind == REQUEST]
                feedback = [e.row for e in batch if e.kind == FEEDBACK]
                self._insert(self._conn, records, feedback)
        except CONNECTIVITY_ERRORS as exc:
            # What was committed stays; the next replay skips it (DO NOTHING).
            self._lost(exc)
            return False
        except psycopg.Error:
            log.exception("request log: a spooled batch was refused; storing row by row")
            if not self._replay_each(spool):
                return False
        spool.clear()
        self.replayed_total += rows
        if self._counters is not None:
            self._counters.log_replayed(rows)
        log.warning("request log: replayed %d spooled rows from %s", rows, spool.path)
        return True

    def _adopt_orphans(self) -> None:
        """Spools beside ours that no live process holds (one whose process died: a worker's,
        or another replica's sharing the folder): replayed here, at start-up and after each
        reconnect. Never deleted (a process may be opening one)."""
        base = self._base_path
        for path in sorted(base.parent.glob(f"{base.stem}*{base.suffix}")):
            if path == self._spool.path or self._conn is None:
                continue
            try:
                orphan = Spool(path)
            except SpoolError:  # a live process's own
                continue
            try:
                if orphan.depth:
                    self._replay_spool(orphan)
            finally:
                orphan.close()

    def _replay_each(self, spool: Spool) -> bool:
        assert self._conn is not None
        for batch in spool.batches(REPLAY_BATCH):
            try:
                self._insert_each(
                    [_current(e.row) for e in batch if e.kind == REQUEST],
                    [e.row for e in batch if e.kind == FEEDBACK],
                )
            except CONNECTIVITY_ERRORS as exc:
                self._lost(exc)
                return False
        return True

    @staticmethod
    def _insert(
        conn: psycopg.Connection[Any],
        records: list[tuple[Any, ...]],
        feedback: list[tuple[Any, ...]],
    ) -> None:
        with conn.transaction(), conn.cursor() as cur:
            if records:
                cur.executemany(_INSERT, records)
            if feedback:
                cur.executemany(_FEEDBACK_INSERT, feedback)

    def _insert_each(self, records: list[tuple[Any, ...]], feedback: list[tuple[Any, ...]]) -> None:
        """A batch Postgres refused: each row alone, so one bad row costs only itself."""
        assert self._conn is not None
        for sql, rows in ((_INSERT, records), (_FEEDBACK_INSERT, feedback)):
            for row in rows:
                try:
                    with self._conn.transaction(), self._conn.cursor() as cur:
                        cur.execute(sql, row)
                except CONNECTIVITY_ERRORS:
                    raise
                except psycopg.Error:
                    log.exception("request log write failed for %s", row[0])

    def _report_depth(self) -> None:
        if self._counters is not None:
            self._counters.log_spool_depth(self._spool.depth)


def _current(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """A spooled request row in today's columns: one spooled by the version before
    `cached_tokens` lacks that last column (its default is 0: no cache read known)."""
    return (*row, 0) if len(row) == len(COLUMNS) - 1 else row


# -- reading --------------------------------------------------------------------------------


class PostgresReader:
    """The LogReader of a Postgres log: one short connection per call."""

    def __init__(self, url: str):
        self.url = url
        self.location = safe_url(url)

    def _conn(self) -> psycopg.Connection[Any]:
        try:
            return _connect(self.url)
        except psycopg.Error as exc:
            raise LogError(f"{self.location}: cannot read the request log: {exc}") from None

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._conn() as conn:
            try:
                return conn.execute(sql, args).fetchall()
            except psycopg.errors.UndefinedTable:
                raise LogError(f"{self.location}: not a request log (no requests table)") from None
            except psycopg.Error as exc:
                raise LogError(f"{self.location}: cannot read the request log: {exc}") from None

    def check(self) -> None:
        self._query("SELECT 1 FROM requests LIMIT 1")

    def count(self, since: float | None = None, until: float | None = None) -> int:
        where, args = _where(since, until)
        return int(self._query(f"SELECT COUNT(*) FROM requests{where}", args)[0][0])

    def batches(
        self, since: float | None = None, until: float | None = None, size: int = 10_000
    ) -> Iterator[list[dict[str, Any]]]:
        self.check()
        where, args = _where(since, until)
        # A server-side cursor: a large log streams, it never sits in memory whole.
        with (
            self._conn() as conn,
            conn.transaction(),
            conn.cursor(name="routegate_log_read") as cur,
        ):
            cur.itersize = size
            cur.execute(f"SELECT * FROM requests{where} ORDER BY ts, request_id", args)
            columns = [d.name for d in cur.description or ()]
            while rows := cur.fetchmany(size):
                yield [decode_row(columns, r) for r in rows]

    def feedback(self) -> list[dict[str, Any]]:
        with self._conn() as conn:
            try:
                cur = conn.execute("SELECT * FROM feedback ORDER BY ts")
            except psycopg.errors.UndefinedTable:
                return []
            columns = [d.name for d in cur.description or ()]
            return [dict(zip(columns, r, strict=True)) for r in cur.fetchall()]

    def find(self, request_id: str) -> dict[str, Any] | None:
        with self._conn() as conn:
            try:
                cur = conn.execute("SELECT * FROM requests WHERE request_id = %s", (request_id,))
            except psycopg.errors.UndefinedTable:
                return None
            row = cur.fetchone()
            columns = [d.name for d in cur.description or ()]
        return None if row is None else decode_row(columns, row)

    def shape(
        self, column: str, owner: str, start: float, end: float, slices: int
    ) -> list[tuple[int, float, int]]:
        assert column in ("route", "api_key_id")
        try:
            rows = self._query(
                f"SELECT FLOOR((ts - %s) * %s / (%s - %s))::int AS slice, SUM(cost_usd), COUNT(*) "
                f"FROM requests WHERE ts >= %s AND ts < %s AND {column} = %s GROUP BY slice",
                (start, slices, end, start, start, end, owner),
            )
        except LogError:
            return []
        return [(int(i), float(c or 0.0), int(n)) for i, c, n in rows]

    def traffic(self, since: float, bucket_s: float, latency_sample: int) -> Traffic:
        try:
            cells = self._query(
                "SELECT COALESCE(model, '(none)'), FLOOR((ts - %s) / %s)::int, COUNT(*),"
                " SUM((status >= 400)::int), SUM(cost_usd),"
                " SUM(CASE WHEN (extra::jsonb #>> '{cache,hit}') = 'true' THEN 1 ELSE 0 END),"
                " COALESCE(api, endpoint_kind), COALESCE(replica, '(unnamed)')"
                " FROM requests WHERE ts >= %s GROUP BY 1, 2, 7, 8",
                (since, bucket_s, since),
            )
            latencies = self._query(
                "SELECT COALESCE(model, '(none)'), COALESCE(replica, '(unnamed)'), latency_ms"
                " FROM requests WHERE ts >= %s AND status < 400 AND latency_ms IS NOT NULL"
                " ORDER BY ts DESC LIMIT %s",
                (since, latency_sample),
            )
        except LogError as exc:
            log.warning("dashboard: %s", exc)
            return Traffic([], [])
        return Traffic(cells, latencies)


def _where(since: float | None, until: float | None) -> tuple[str, tuple[float, ...]]:
    clauses, args = [], []
    if since is not None:
        clauses.append("ts >= %s")
        args.append(since)
    if until is not None:
        clauses.append("ts < %s")
        args.append(until)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), tuple(args)
