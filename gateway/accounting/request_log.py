"""The request log: one row per request, written off the event loop.

Requests only enqueue a record (no I/O); a writer thread batches the inserts into a sink: the
SQLite file here by default, or Postgres (gateway/accounting/log_store/, which opens either).
Later reports read the same store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import orjson

log = logging.getLogger("routegate.log")

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    request_id TEXT PRIMARY KEY,
    ts REAL NOT NULL,                -- unix time the request arrived
    api_key_id TEXT,
    endpoint_kind TEXT NOT NULL,     -- chat | completions
    route TEXT,
    model TEXT,                      -- the model that answered (or last tried)
    endpoint TEXT,
    stream INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    usage_exact INTEGER NOT NULL DEFAULT 1,
    cost_usd REAL NOT NULL DEFAULT 0,
    latency_ms REAL,
    ttft_ms REAL,
    status INTEGER NOT NULL,         -- HTTP status given to the client (499: client went away)
    error TEXT,
    fallbacks TEXT NOT NULL DEFAULT '[]',  -- JSON list of models that failed before the answer
    extra TEXT NOT NULL DEFAULT '{}',      -- JSON: per-step details for routers and cascades
    team TEXT,                       -- the API key's team
    prompt TEXT,                     -- the router's text, redacted (routes with log_prompts)
    api TEXT,                        -- chat | completions | messages | responses | embeddings
    replica TEXT,                    -- the gateway replica that served it (serve --replica)
    cached_tokens INTEGER NOT NULL DEFAULT 0  -- of prompt_tokens, read from a prefix cache
);
CREATE INDEX IF NOT EXISTS requests_ts ON requests(ts);
-- Feedback on a request's answer: explicit (POST /v1/feedback, source "user" unless named)
-- or implicit (the gateway's own signals: judge, escalation, upstream_error, slo). One row per
-- (request, source, model): a repeated call replaces its row, it does not add one.
CREATE TABLE IF NOT EXISTS feedback (
    request_id TEXT NOT NULL,
    source TEXT NOT NULL,
    model TEXT NOT NULL DEFAULT '',  -- the model the signal is about ('' : the request's)
    score REAL NOT NULL,             -- 0 (bad) .. 1 (good)
    ts REAL NOT NULL,
    api_key_id TEXT,
    comment TEXT,
    PRIMARY KEY (request_id, source, model)
);
CREATE INDEX IF NOT EXISTS feedback_ts ON feedback(ts);
"""


@dataclass(frozen=True, slots=True)
class CacheOutcome:
    """A response cache's answer to one request: a miss, or a hit and what it saved."""

    hit: bool
    saved_usd: float = 0.0
    cached_at: float = 0.0

    def json(self) -> dict[str, Any]:
        if not self.hit:
            return {"hit": False}
        return {"hit": True, "saved_usd": self.saved_usd, "cached_at": self.cached_at}


@dataclass(frozen=True, slots=True)
class ChargedStep:
    """One model call a request paid for: a cascade step, or a fallback that answered badly."""

    model: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    endpoint: str
    detail: dict[str, Any] = field(default_factory=dict)  # what the step decided
    cached_tokens: int = 0  # of prompt_tokens, read from the upstream's prefix cache

    def json(self) -> dict[str, Any]:
        cached = {"cached_tokens": self.cached_tokens} if self.cached_tokens else {}
        return {
            "model": self.model,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            **cached,
            "cost_usd": self.cost_usd,
            "endpoint": self.endpoint,
            **self.detail,
        }


@dataclass(slots=True)
class RequestNotes:
    """What the pipeline noted about a request that headers and metrics read back. Written
    into the row's `extra` column, first and in this order, the notes not set left out."""

    cache: CacheOutcome | None = None
    price_multiplier: float | None = None  # budget pacing's factor, when it is not 1
    predictions: dict[str, dict[str, float]] | None = None  # the router's, per model
    skipped_for_budget: list[str] | None = None  # models a budget could no longer cover
    steps: list[ChargedStep] | None = None  # every call paid for, when there were several
    escalations: int | None = None  # a confidence cascade's
    switches: int | None = None  # an EAD cascade's
    # A learned route's online layer: {"context": int, "explored": bool, "offline": {model: q}}
    # (what feedback on this request teaches it; see routers/serving/online.py).
    online: dict[str, Any] | None = None
    # An experiment route's assignment: {"name": the experiment, "arm": the route that served}.
    experiment: dict[str, str] | None = None
    # What the upstreams' prefix caches saved: the calls at the full input price, less their
    # cost with the cached prompt tokens priced as cached (set only when it saved something).
    prompt_cache_saved_usd: float | None = None

    def json(self, extra: dict[str, Any]) -> dict[str, Any]:
        """The `extra` column: these notes, then the record's free-form `extra`."""
        out: dict[str, Any] = {}
        if self.cache is not None:
            out["cache"] = self.cache.json()
        if self.price_multiplier is not None:
            out["price_multiplier"] = self.price_multiplier
        if self.predictions is not None:
            out["predictions"] = self.predictions
        if self.skipped_for_budget is not None:
            out["skipped_for_budget"] = self.skipped_for_budget
        if self.steps is not None:
            out["steps"] = [step.json() for step in self.steps]
        if self.escalations is not None:
            out["escalations"] = self.escalations
        if self.switches is not None:
            out["switches"] = self.switches
        if self.online is not None:
            out["online"] = self.online
        if self.experiment is not None:
            out["experiment"] = self.experiment
        if self.prompt_cache_saved_usd is not None:
            out["prompt_cache_saved_usd"] = self.prompt_cache_saved_usd
        out.update(extra)
        return out


@dataclass(frozen=True, slots=True)
class FeedbackRecord:
    """One feedback row (see the `feedback` table)."""

    request_id: str
    source: str
    score: float
    ts: float
    model: str = ""
    api_key_id: str | None = None
    comment: str | None = None

    def row(self) -> tuple[Any, ...]:
        return (
            self.request_id, self.source, self.model, self.score, self.ts, self.api_key_id,
            self.comment,
        )  # fmt: skip


_FEEDBACK_INSERT = (
    "INSERT OR REPLACE INTO feedback "
    "(request_id, source, model, score, ts, api_key_id, comment) VALUES (?, ?, ?, ?, ?, ?, ?)"
)


@dataclass(slots=True)
class RequestRecord:
    request_id: str
    ts: float
    endpoint_kind: str
    stream: bool
    api_key_id: str | None = None
    route: str | None = None
    model: str | None = None
    endpoint: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    usage_exact: bool = True
    cost_usd: float = 0.0
    latency_ms: float | None = None
    ttft_ms: float | None = None
    status: int = 200
    error: str | None = None
    fallbacks: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # free-form; see also RequestNotes
    team: str | None = None
    prompt: str | None = None  # redacted, and only on routes with `log_prompts: true`
    api: str | None = None  # the API the client called (endpoint_kind: what the backend got)
    replica: str | None = None  # which gateway served it; RequestLog.write fills it in
    cached_tokens: int = 0  # of prompt_tokens, those the upstreams read from their prefix cache

    def row(self, notes: RequestNotes | None = None) -> tuple[Any, ...]:
        # Runs in the writer thread. In field order (the columns'); asdict() would deep-copy.
        extra = self.extra if notes is None else notes.json(self.extra)
        return (
            self.request_id, self.ts, self.endpoint_kind, int(self.stream), self.api_key_id,
            self.route, self.model, self.endpoint, self.prompt_tokens, self.completion_tokens,
            int(self.usage_exact), self.cost_usd, self.latency_ms, self.ttft_ms, self.status,
            self.error, orjson.dumps(self.fallbacks).decode(), orjson.dumps(extra).decode(),
            self.team, self.prompt, self.api, self.replica, self.cached_tokens,
        )  # fmt: skip


# The table's columns are the record's fields, in the order row() gives them.
_COLUMNS = [f.name for f in fields(RequestRecord)]
_COLUMN_TYPES = {
    "team": "TEXT",
    "prompt": "TEXT",
    "api": "TEXT",
    "replica": "TEXT",
    "cached_tokens": "INTEGER NOT NULL DEFAULT 0",
}  # columns added after the first release, and their types
_INSERT = (
    f"INSERT OR REPLACE INTO requests ({', '.join(_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(_COLUMNS))})"
)
_STOP = object()
# Several worker processes write the same file (`routegate serve --workers N`): SQLite lets
# one writer in at a time and the others wait on its lock this long...
BUSY_TIMEOUT_S = 30.0
# ...and a batch that still finds it locked is tried again, never dropped for contention.
_LOCKED_RETRIES = 20
COLUMNS = tuple(_COLUMNS)  # what a sink's request rows hold, in order
FEEDBACK_COLUMNS = ("request_id", "source", "model", "score", "ts", "api_key_id", "comment")


class LogSink(Protocol):
    """Where the writer thread puts its batches. Every method runs in the writer thread."""

    location: str  # the file or URL, for messages (no password)

    def store(self, records: list[tuple[Any, ...]], feedback: list[tuple[Any, ...]]) -> None:
        """Keep one batch (rows in COLUMNS / FEEDBACK_COLUMNS order); never raises."""
        ...

    def retry_in(self) -> float | None:
        """Seconds until `tick` is wanted even with nothing queued; None: not needed."""
        ...

    def tick(self) -> None:
        """Work the sink left for later (a replay of rows it could not store yet)."""
        ...

    def status(self) -> dict[str, Any]:
        """What /readyz shows of the store."""
        ...

    def close(self) -> None: ...


class SqliteSink:
    """The default store: one SQLite file, created (and given newer columns) at start-up."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.location = str(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Created here so a bad path fails at start-up, not on the first request.
        with sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S) as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
            # A log written by an older version lacks newer columns: add them.
            have = {row[1] for row in db.execute("PRAGMA table_info(requests)")}
            for column in _COLUMNS:
                if column not in have:
                    try:
                        db.execute(
                            f"ALTER TABLE requests ADD COLUMN {column} {_COLUMN_TYPES[column]}"
                        )
                    except sqlite3.OperationalError as exc:  # another worker added it first
                        if "duplicate column" not in str(exc):
                            raise
        db.close()
        self._db: sqlite3.Connection | None = None  # opened by the writer thread

    def store(self, records: list[tuple[Any, ...]], feedback: list[tuple[Any, ...]]) -> None:
        if self._db is None:
            self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=BUSY_TIMEOUT_S)
            self._db.execute("PRAGMA synchronous=NORMAL")
        try:
            _commit(self._db, records, feedback)
        except sqlite3.Error:
            # Keep the gateway serving; the lost rows are named in the log.
            log.exception(
                "request log write failed for %s",
                [r[0] for r in records] + [f[0] for f in feedback],
            )

    def retry_in(self) -> float | None:
        return None

    def tick(self) -> None:
        pass

    def status(self) -> dict[str, Any]:
        return {"store": "sqlite", "spooled_total": 0, "spool_depth": 0}

    def close(self) -> None:
        if self._db is not None:
            self._db.close()


def _commit(
    db: sqlite3.Connection, records: list[tuple[Any, ...]], feedback: list[tuple[Any, ...]]
) -> None:
    """One transaction for the batch; on a lock held past the busy timeout by another
    process, the whole batch again."""
    for attempt in range(_LOCKED_RETRIES + 1):
        try:
            with db:
                db.executemany(_INSERT, records)
                db.executemany(_FEEDBACK_INSERT, feedback)
            return
        except sqlite3.OperationalError as exc:
            locked = "locked" in str(exc) or "busy" in str(exc)
            if not locked or attempt == _LOCKED_RETRIES:
                raise
            log.warning("request log is locked by another writer; trying the batch again")


class RequestLog:
    """Append-only request log fed through a queue by a single writer thread. `path_or_sink`: a
    SQLite file, or a sink (gateway.accounting.log_store.open_request_log makes one)."""

    def __init__(
        self,
        path_or_sink: str | Path | LogSink,
        *,
        batch: int = 512,
        window_s: float = 0.05,
        replica: str | None = None,
        durable: bool = False,
    ):
        """`durable`: requests wait (`stored()`) until their row is committed or spooled, so a
        process killed right after answering loses no row (group commit: one wait per batch)."""
        if isinstance(path_or_sink, str | Path):
            path_or_sink = SqliteSink(path_or_sink)
        self.sink: LogSink = path_or_sink
        self.location = self.sink.location
        self.path = Path(self.location)  # the SQLite file (a URL's sink has none: unused)
        self.replica = replica
        self.durable = durable
        self._batch = batch
        self._window_s = window_s
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._closing = threading.Event()  # cuts the writer's window short at close()
        self._flushed = threading.Condition()
        self._pending = 0
        self._queued = 0  # items ever queued, and stored: `stored()` waits on these
        self._stored = 0
        self._waiters: list[tuple[int, asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._thread = threading.Thread(target=self._run, name="request-log", daemon=True)
        self._thread.start()

    def write(self, record: RequestRecord, notes: RequestNotes | None = None) -> None:
        """Never blocks: the record (and the notes that go in its `extra`) is queued for the
        writer thread."""
        if record.replica is None:
            record.replica = self.replica
        self._put((record, notes))

    def write_feedback(self, feedback: FeedbackRecord) -> None:
        """Never blocks, like `write`; the same writer thread stores it."""
        self._put(feedback)

    def _put(self, item: Any) -> None:
        # Counted and queued under one lock: the queue's order is the count's.
        with self._flushed:
            self._pending += 1
            self._queued += 1
            self._queue.put(item)

    async def stored(self, timeout: float = 5.0) -> bool:
        """Wait until every row queued so far is stored (committed, or fsync'd to the spool);
        False after `timeout` (a store that hangs must not hang the requests: the rows stay
        queued and are written when it answers)."""
        with self._flushed:
            if self._stored >= self._queued:
                return True
            future = asyncio.get_running_loop().create_future()
            self._waiters.append((self._queued, asyncio.get_running_loop(), future))
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            log.warning("request log: a row is not stored after %.1f s; answering anyway", timeout)
            return False
        return True

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued record is stored (in the store, or in its spool)."""
        with self._flushed:
            return self._flushed.wait_for(lambda: self._pending == 0, timeout)

    def status(self) -> dict[str, Any]:
        return self.sink.status()

    def close(self) -> None:
        self._queue.put(_STOP)
        self._closing.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        stop = False
        while not stop:
            try:
                # A sink with rows to replay asks to be woken even when no request comes.
                items = [self._queue.get(timeout=self.sink.retry_in())]
            except queue.Empty:
                self.sink.tick()
                continue
            # Gather what arrives within a short window: one commit per window, not per row.
            # The writer sleeps through the window and then takes what came, rather than
            # waiting on the queue: a waiting writer is woken by every request's put(), a
            # thread switch (and the GIL handed over and back) per request on the serving core.
            deadline = time.monotonic() + self._window_s
            while len(items) < self._batch and items[-1] is not _STOP:
                try:
                    items.append(self._queue.get_nowait())
                    continue
                except queue.Empty:
                    pass
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closing.is_set():
                    break
                self._closing.wait(remaining)
            kept = [i for i in items if i is not _STOP]
            stop = len(kept) != len(items)
            if kept:
                records = [i.row(n) for i, n in (k for k in kept if isinstance(k, tuple))]
                feedback = [i.row() for i in kept if isinstance(i, FeedbackRecord)]
                self.sink.store(records, feedback)
            with self._flushed:
                self._pending -= len(kept)
                self._stored += len(kept)
                ready = [w for w in self._waiters if w[0] <= self._stored]
                self._waiters = [w for w in self._waiters if w[0] > self._stored]
                self._flushed.notify_all()
            for _, loop, future in ready:
                with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                    loop.call_soon_threadsafe(_resolve, future)
        self.sink.close()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():  # not cancelled meanwhile (the client went away)
        future.set_result(None)


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """All rows as dicts, JSON columns decoded (for tests and reports)."""
    db = sqlite3.connect(path)
    db.row_factory = sqlite3.Row
    try:
        rows = [dict(r) for r in db.execute("SELECT * FROM requests ORDER BY ts")]
    finally:
        db.close()
    for r in rows:
        r["fallbacks"] = orjson.loads(r["fallbacks"])
        r["extra"] = orjson.loads(r["extra"])
    return rows


def read_feedback(path: str | Path) -> list[dict[str, Any]]:
    """All feedback rows as dicts, oldest first (for tests, reports and training)."""
    db = sqlite3.connect(path)
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute("SELECT * FROM feedback ORDER BY ts")]
    except sqlite3.OperationalError:  # a log written before feedback existed
        return []
    finally:
        db.close()


def find_record(path: str | Path, request_id: str) -> dict[str, Any] | None:
    """One row by request id, JSON columns decoded (blocking: call it off the event loop)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        row = db.execute("SELECT * FROM requests WHERE request_id = ?", (request_id,)).fetchone()
    finally:
        db.close()
    if row is None:
        return None
    out = dict(row)
    out["fallbacks"] = orjson.loads(out["fallbacks"])
    out["extra"] = orjson.loads(out["extra"])
    return out
