"""`MemoryState`: the in-process state store (one gateway process, the embedded default).

Atomicity: everything runs on one event loop, and no operation awaits inside its critical
section, so each call below is one indivisible step - the same guarantee a Lua script gives
in Redis.

Persistence (optional, `path`): a small SQLite file with these tables:

- `keys(id PRIMARY KEY, data)`: each virtual key as JSON, written synchronously whenever a key
  changes (rare: an admin action).
- `spend(budget PRIMARY KEY, micros, updated_at)`: settled spend per budget window, in integer
  micro-dollars. Snapshotted off the event loop every `SNAPSHOT_INTERVAL_S` (only the budgets
  that changed) and at `aclose()`. A crash loses at most the last interval of spend.
- `pacing(name PRIMARY KEY, data)`: pacing controller state as JSON, snapshotted with spend.
- `meta(name PRIMARY KEY, value)`: `has_keys`.
- `stats(tbl, cell, weight, total, total_sq, updated_at)`: what online layers learned
  (`stats_update`), snapshotted with spend; a table nobody updated for `STATS_IDLE_S` is
  dropped when the file is opened (Redis: the same TTL).

Rate windows and open reservations are not persisted: they are worth seconds to minutes. Nor
is the response cache: it is rebuilt by traffic, and a restart costs only the misses.

Over 400 lines on purpose: one class implements the whole State protocol, and its parts
(keys, budgets, windows, pacing, cache) share the one snapshot file and the atomicity rule above.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import heapq
import json
import logging
import math
import sqlite3
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from gateway.state.base import (
    CACHE_GHOST_ENTRIES,
    CacheEntry,
    Eviction,
    PacingState,
    PolicyRecord,
    PolicyReport,
    Reservation,
    RunningStat,
    VirtualKey,
    WindowResult,
    cache_priority,
    from_micros,
    to_micros,
)

log = logging.getLogger(__name__)

SNAPSHOT_INTERVAL_S = 2.0
# A budget window nobody wrote to for this long is dropped (Redis: the same TTL).
BUDGET_IDLE_S = 40 * 86400.0
STATS_IDLE_S = 30 * 86400.0  # an online layer's table nobody updated for this long is gone
# Float slack for the sliding-window comparison: 0.1 + 0.2 must still fit a limit of 0.3.
WINDOW_EPS = 1e-9


# -- helpers shared with the Redis store (one definition, one behaviour) ---------------------


def key_to_fields(key: VirtualKey) -> dict[str, str]:
    """A key as field -> JSON value (a Redis hash; a JSON object in SQLite)."""
    return {f.name: json.dumps(getattr(key, f.name)) for f in dataclasses.fields(VirtualKey)}


def key_from_fields(fields: dict[str, str]) -> VirtualKey:
    known = {f.name for f in dataclasses.fields(VirtualKey)}
    # Fields a newer version wrote are ignored, so an older replica can still read the key.
    return VirtualKey(**{k: json.loads(v) for k, v in fields.items() if k in known})


def pacing_to_json(state: PacingState) -> str:
    return json.dumps(dataclasses.asdict(state))


def pacing_from_json(text: str) -> PacingState:
    data = json.loads(text)
    return PacingState(
        price_multiplier=float(data.get("price_multiplier", 1.0)),
        integral=float(data.get("integral", 0.0)),
        updated_at=float(data.get("updated_at", 0.0)),
        extra={str(k): float(v) for k, v in (data.get("extra") or {}).items()},
    )


def window_position(window_s: float, now: float) -> tuple[int, float]:
    """(index of the fixed window holding `now`, weight of the previous window): the previous
    window counts for the part of it the sliding window still overlaps."""
    index = math.floor(now / window_s)
    elapsed = (now - index * window_s) / window_s
    return index, 1.0 - elapsed


def window_fits(prev: float, cur: float, weight: float, amount: float, limit: float) -> bool:
    return prev * weight + cur + amount <= limit + WINDOW_EPS


def window_retry_after(
    prev: float, cur: float, weight: float, amount: float, limit: float, window_s: float
) -> float:
    """Seconds until `amount` fits, assuming no other hits meanwhile. The previous window's
    share falls linearly; at the next boundary the current window becomes the previous one."""
    if amount > limit + WINDOW_EPS:
        return 2 * window_s  # never fits; after two windows the counters are at least empty
    room = limit - cur - amount
    if room >= -WINDOW_EPS and prev > 0:
        # Within this window: need prev * w' <= room, w' falling from `weight` to 0.
        target = max(room, 0.0) / prev
        return max(0.0, (weight - target) * window_s)
    # Only after the boundary: then cur is the previous window, weighted (1 - elapsed).
    to_boundary = weight * window_s
    if cur <= 0:
        return to_boundary
    target = (limit - amount) / cur  # the weight cur may still have
    return to_boundary + max(0.0, 1.0 - target) * window_s


# -- the store ---------------------------------------------------------------------------------


@dataclass(slots=True)
class _Snapshot:
    """What changed since the last snapshot, as plain values (the writer thread never sees the
    live dicts)."""

    spend: list[tuple[str, int, float]] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)  # budgets pruned
    pacing: list[tuple[str, str]] = field(default_factory=list)
    stats: list[tuple[str, str, float, float, float, float]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.spend or self.gone or self.pacing or self.stats)


@dataclass(slots=True)
class _Budget:
    spent: int = 0  # settled, micro-dollars
    open: int = 0  # sum of open reservations, micro-dollars
    reservations: dict[str, tuple[int, float]] = field(default_factory=dict)  # id -> (amt, exp)
    expiries: list[tuple[float, str]] = field(default_factory=list)  # heap; stale entries skipped
    touched: float = 0.0  # wall-clock time of the last write, for idle pruning

    def drop_expired(self, now: float) -> None:
        heap = self.expiries
        while heap and heap[0][0] <= now:
            expires_at, rid = heapq.heappop(heap)
            entry = self.reservations.get(rid)
            if entry is not None and entry[1] == expires_at:
                del self.reservations[rid]
                self.open -= entry[0]
        if not self.reservations:
            heap.clear()  # only stale entries of settled reservations can be left
            self.open = 0

    def remove(self, rid: str) -> None:
        entry = self.reservations.pop(rid, None)
        if entry is not None:
            self.open -= entry[0]
        if not self.reservations:
            self.expiries.clear()
            self.open = 0


@dataclass(slots=True)
class _Window:
    index: int
    prev: float = 0.0
    cur: float = 0.0

    def roll(self, index: int) -> None:
        """Move to fixed window `index` (a clock that steps back stays in the newest one)."""
        if index == self.index + 1:
            self.prev, self.cur = self.cur, 0.0
        elif index > self.index + 1:
            self.prev, self.cur = 0.0, 0.0
        else:
            return
        self.index = index


@dataclass(slots=True)
class _CacheItem:
    value: bytes
    cost: float
    created: float
    expires: float
    eviction: str
    freq: int
    hits: int = 0
    priority: float = 0.0


@dataclass(slots=True)
class _CacheSpace:
    """One cache namespace. The heaps hold (priority or expiry, key); entries whose value no
    longer matches the item are stale and skipped (lazy deletion keeps each update O(log n))."""

    items: dict[str, _CacheItem] = field(default_factory=dict)
    by_priority: list[tuple[float, str]] = field(default_factory=list)
    by_expiry: list[tuple[float, str]] = field(default_factory=list)
    bytes: int = 0
    clock: float = 0.0  # GDSF's aging value L
    ghost: OrderedDict[str, int] = field(default_factory=OrderedDict)

    def set_priority(self, key: str, item: _CacheItem, now: float) -> None:
        item.priority = cache_priority(
            item.eviction, self.clock, item.freq, item.cost, len(item.value), now
        )
        heapq.heappush(self.by_priority, (item.priority, key))
        if len(self.by_priority) > 2 * len(self.items) + 64:  # mostly stale: rebuild
            self.by_priority = [(i.priority, k) for k, i in self.items.items()]
            heapq.heapify(self.by_priority)

    def remove(self, key: str) -> _CacheItem | None:
        item = self.items.pop(key, None)
        if item is not None:
            self.bytes -= len(item.value)
        return item

    def count_miss(self, key: str, times: int = 1) -> None:
        self.ghost[key] = self.ghost.pop(key, 0) + times
        while len(self.ghost) > CACHE_GHOST_ENTRIES:
            self.ghost.popitem(last=False)

    def drop_expired(self, now: float) -> None:
        heap = self.by_expiry
        while heap and heap[0][0] <= now:
            expires, key = heapq.heappop(heap)
            item = self.items.get(key)
            if item is not None and item.expires == expires:
                self.remove(key)  # its frequency is forgotten: a stale answer starts over

    def evict_lowest(self) -> str | None:
        heap = self.by_priority
        while heap:
            priority, key = heapq.heappop(heap)
            item = self.items.get(key)
            if item is None or item.priority != priority:
                continue
            self.remove(key)
            if item.eviction == "gdsf":
                self.clock = max(self.clock, priority)
            self.count_miss(key, item.freq)  # its frequency outlives the entry
            return key
        return None


def _copy_key(key: VirtualKey) -> VirtualKey:
    # Callers get their own copy: mutating a returned key must not change the store.
    return dataclasses.replace(
        key,
        routes=list(key.routes) if key.routes is not None else None,
        pacing=dict(key.pacing) if key.pacing is not None else None,
    )


class MemoryState:
    """The in-process `State`. See the module docstring for the persistence format."""

    def __init__(self, path: Path | None = None) -> None:
        self._keys: dict[str, VirtualKey] = {}
        self._by_hash: dict[str, str] = {}
        self._has_keys = False
        self._budgets: dict[str, _Budget] = {}
        self._windows: dict[str, _Window] = {}
        self._pacing: dict[str, PacingState] = {}
        self._caches: dict[str, _CacheSpace] = {}
        self._claims: dict[str, float] = {}  # name -> expiry
        self._stats: dict[str, dict[str, RunningStat]] = {}
        self._policies: list[PolicyRecord] = []  # id i at index i - 1
        self._policy_reports: dict[int, dict[str, PolicyReport]] = {}
        self._policy_replicas: dict[str, PolicyReport] = {}
        self._path = path
        self._db: sqlite3.Connection | None = None
        self._db_lock = threading.Lock()  # the snapshot thread and the loop share one connection
        self._dirty_budgets: set[str] = set()
        self._dirty_pacing: set[str] = set()
        self._dirty_stats: set[tuple[str, str]] = set()  # (table, cell)
        self._snapshotter: asyncio.Task[None] | None = None
        self._closed = False
        if path is not None:
            self._open_db(path)
            self._load()

    # -- persistence -------------------------------------------------------------------------

    def _open_db(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        # WAL + NORMAL: a snapshot commits in well under a millisecond and never blocks readers.
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(
            """
            CREATE TABLE IF NOT EXISTS keys (id TEXT PRIMARY KEY, data TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS spend (
                budget TEXT PRIMARY KEY, micros INTEGER NOT NULL, updated_at REAL NOT NULL);
            CREATE TABLE IF NOT EXISTS pacing (name TEXT PRIMARY KEY, data TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS stats (
                tbl TEXT NOT NULL, cell TEXT NOT NULL, weight REAL NOT NULL,
                total REAL NOT NULL, total_sq REAL NOT NULL, updated_at REAL NOT NULL,
                PRIMARY KEY (tbl, cell));
            """
        )
        self._db = db

    def _load(self) -> None:
        assert self._db is not None
        with self._db_lock:
            keys = self._db.execute("SELECT data FROM keys").fetchall()
            spend = self._db.execute("SELECT budget, micros, updated_at FROM spend").fetchall()
            pacing = self._db.execute("SELECT name, data FROM pacing").fetchall()
            meta = dict(self._db.execute("SELECT name, value FROM meta").fetchall())
            idle = time.time() - STATS_IDLE_S
            self._db.execute(
                "DELETE FROM stats WHERE tbl IN"
                " (SELECT tbl FROM stats GROUP BY tbl HAVING MAX(updated_at) < ?)",
                (idle,),
            )
            stats = self._db.execute(
                "SELECT tbl, cell, weight, total, total_sq, updated_at FROM stats"
            ).fetchall()
        for (data,) in keys:
            key = key_from_fields(json.loads(data))
            self._keys[key.id] = key
            self._by_hash[key.secret_hash] = key.id
        self._has_keys = meta.get("has_keys") == "1" or bool(self._keys)
        for budget, micros, updated_at in spend:
            self._budgets[budget] = _Budget(spent=int(micros), touched=float(updated_at))
        for name, data in pacing:
            self._pacing[name] = pacing_from_json(data)
        for table, cell, weight, total, total_sq, updated_at in stats:
            self._stats.setdefault(table, {})[cell] = RunningStat(
                weight, total, total_sq, updated_at
            )

    def _write_key(self, key: VirtualKey) -> None:
        if self._db is None:
            return
        data = json.dumps(key_to_fields(key))
        with self._db_lock:
            self._db.execute("BEGIN")
            self._db.execute("INSERT OR REPLACE INTO keys (id, data) VALUES (?, ?)", (key.id, data))
            self._db.execute("INSERT OR REPLACE INTO meta (name, value) VALUES ('has_keys', '1')")
            self._db.execute("COMMIT")

    def _collect_snapshot(self) -> _Snapshot:
        """On the loop: copy what changed (plain values), so the thread never sees live dicts."""
        out = _Snapshot()
        for name in self._dirty_budgets:
            budget = self._budgets.get(name)
            if budget is None:
                out.gone.append(name)
            else:
                out.spend.append((name, budget.spent, budget.touched))
        out.pacing = [
            (name, pacing_to_json(self._pacing[name]))
            for name in self._dirty_pacing
            if name in self._pacing
        ]
        for table, cell in self._dirty_stats:
            st = self._stats[table][cell]
            out.stats.append((table, cell, st.weight, st.total, st.total_sq, st.updated_at))
        self._dirty_budgets.clear()
        self._dirty_pacing.clear()
        self._dirty_stats.clear()
        return out

    def _write_snapshot(self, snap: _Snapshot) -> None:
        if self._db is None or not snap:
            return
        with self._db_lock:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT OR REPLACE INTO spend (budget, micros, updated_at) VALUES (?, ?, ?)",
                snap.spend,
            )
            self._db.executemany("DELETE FROM spend WHERE budget = ?", [(g,) for g in snap.gone])
            self._db.executemany(
                "INSERT OR REPLACE INTO pacing (name, data) VALUES (?, ?)", snap.pacing
            )
            self._db.executemany(
                "INSERT OR REPLACE INTO stats (tbl, cell, weight, total, total_sq, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                snap.stats,
            )
            self._db.execute("COMMIT")

    async def snapshot(self) -> None:
        """Write changed spend, pacing and online statistics now, off the event loop."""
        self._prune_idle_budgets()
        snap = self._collect_snapshot()
        try:
            await asyncio.to_thread(self._write_snapshot, snap)
        except Exception:
            # Not lost: marked dirty again, so the next snapshot retries.
            self._dirty_budgets.update(name for name, _, _ in snap.spend)
            self._dirty_budgets.update(snap.gone)
            self._dirty_pacing.update(name for name, _ in snap.pacing)
            self._dirty_stats.update((table, cell) for table, cell, *_ in snap.stats)
            raise

    async def _snapshot_loop(self) -> None:
        while True:
            await asyncio.sleep(SNAPSHOT_INTERVAL_S)
            try:
                await self.snapshot()
            except Exception:
                log.exception("state: could not snapshot spend to %s", self._path)

    def _mark_dirty(
        self,
        budget: str | None = None,
        pacing: str | None = None,
        stats: tuple[str, str] | None = None,
    ) -> None:
        if self._db is None:
            return
        if budget is not None:
            self._dirty_budgets.add(budget)
        if pacing is not None:
            self._dirty_pacing.add(pacing)
        if stats is not None:
            self._dirty_stats.add(stats)
        if self._snapshotter is None and not self._closed:
            # Started on the first write, so the constructor needs no running loop.
            self._snapshotter = asyncio.get_running_loop().create_task(self._snapshot_loop())

    def _prune_idle_budgets(self) -> None:
        cutoff = time.time() - BUDGET_IDLE_S
        idle = [
            name for name, b in self._budgets.items() if b.touched < cutoff and not b.reservations
        ]
        for name in idle:
            del self._budgets[name]
            if self._db is not None:
                self._dirty_budgets.add(name)

    # -- virtual keys ------------------------------------------------------------------------

    async def put_key(self, key: VirtualKey) -> None:
        stored = _copy_key(key)
        old = self._keys.get(key.id)
        if old is not None and old.secret_hash != key.secret_hash:
            self._by_hash.pop(old.secret_hash, None)
        self._keys[key.id] = stored
        self._by_hash[key.secret_hash] = key.id
        self._has_keys = True
        self._write_key(stored)

    async def key_by_hash(self, secret_hash: str) -> VirtualKey | None:
        key_id = self._by_hash.get(secret_hash)
        key = self._keys.get(key_id) if key_id is not None else None
        return _copy_key(key) if key is not None else None

    async def key_by_id(self, key_id: str) -> VirtualKey | None:
        key = self._keys.get(key_id)
        return _copy_key(key) if key is not None else None

    async def list_keys(self) -> list[VirtualKey]:
        keys = sorted(self._keys.values(), key=lambda k: (k.created_at, k.id))
        return [_copy_key(k) for k in keys]

    async def revoke_key(self, key_id: str, at: float) -> bool:
        key = self._keys.get(key_id)
        if key is None:
            return False
        if key.revoked_at is None:  # the first revocation time stands
            key.revoked_at = at
            self._write_key(key)
        return True

    async def has_keys(self) -> bool:
        return self._has_keys

    # -- hard budgets ------------------------------------------------------------------------

    async def reserve(
        self,
        budget: str,
        reservation_id: str,
        amount_usd: float,
        limit_usd: float,
        ttl_s: float,
        now: float,
    ) -> Reservation:
        amount, limit = to_micros(amount_usd), to_micros(limit_usd)
        b = self._budgets.get(budget)
        if b is None:
            b = self._budgets[budget] = _Budget()
        b.drop_expired(now)
        b.remove(reservation_id)  # reserving an id again replaces it
        ok = b.spent + b.open + amount <= limit
        if ok:
            expires_at = now + ttl_s
            b.reservations[reservation_id] = (amount, expires_at)
            heapq.heappush(b.expiries, (expires_at, reservation_id))
            b.open += amount
        b.touched = time.time()
        return Reservation(ok, from_micros(b.spent), from_micros(b.open), from_micros(limit))

    async def settle(self, budget: str, reservation_id: str, actual_usd: float) -> float:
        b = self._budgets.get(budget)
        if b is None:
            b = self._budgets[budget] = _Budget()
        b.remove(reservation_id)
        b.spent += to_micros(actual_usd)  # always: spend is never lost, expired or not
        b.touched = time.time()
        self._mark_dirty(budget=budget)
        return from_micros(b.spent)

    async def release(self, budget: str, reservation_id: str) -> None:
        b = self._budgets.get(budget)
        if b is not None:
            b.remove(reservation_id)

    async def budget_usage(self, budget: str, now: float) -> tuple[float, float]:
        b = self._budgets.get(budget)
        if b is None:
            return 0.0, 0.0
        open_now = sum(amt for amt, exp in b.reservations.values() if exp > now)
        return from_micros(b.spent), from_micros(open_now)

    # -- rate limits -------------------------------------------------------------------------

    def _window(self, name: str, index: int) -> _Window:
        w = self._windows.get(name)
        if w is None:
            w = self._windows[name] = _Window(index)
        else:
            w.roll(index)
        return w

    async def window_hit(
        self, name: str, amount: float, limit: float, window_s: float, now: float
    ) -> WindowResult:
        index, weight = window_position(window_s, now)
        w = self._window(name, index)
        if window_fits(w.prev, w.cur, weight, amount, limit):
            w.cur += amount
            return WindowResult(True, w.prev * weight + w.cur)
        retry = window_retry_after(w.prev, w.cur, weight, amount, limit, window_s)
        return WindowResult(False, w.prev * weight + w.cur, retry)

    async def window_add(self, name: str, amount: float, window_s: float, now: float) -> None:
        index, _ = window_position(window_s, now)
        self._window(name, index).cur += amount

    async def window_used(self, name: str, window_s: float, now: float) -> float:
        index, weight = window_position(window_s, now)
        w = self._windows.get(name)
        if w is None:
            return 0.0
        if index == w.index:
            return w.prev * weight + w.cur
        if index == w.index + 1:
            return w.cur * weight
        if index < w.index:
            return w.prev * weight + w.cur  # a clock stepping back reads the newest window
        return 0.0

    # -- pacing ------------------------------------------------------------------------------

    async def pacing_get(self, name: str) -> PacingState | None:
        state = self._pacing.get(name)
        return dataclasses.replace(state, extra=dict(state.extra)) if state is not None else None

    async def pacing_update(self, name: str, expected_updated_at: float, new: PacingState) -> bool:
        current = self._pacing.get(name)
        current_at = current.updated_at if current is not None else 0.0
        if current_at != expected_updated_at:
            return False
        self._pacing[name] = dataclasses.replace(new, extra=dict(new.extra))
        self._mark_dirty(pacing=name)
        return True

    # -- response cache ----------------------------------------------------------------------

    async def cache_get(self, namespace: str, key: str, now: float) -> CacheEntry | None:
        space = self._caches.get(namespace)
        if space is None:
            space = self._caches[namespace] = _CacheSpace()
        item = space.items.get(key)
        if item is not None and item.expires <= now:
            space.remove(key)
            item = None
        if item is None:
            space.count_miss(key)
            return None
        item.hits += 1
        item.freq += 1
        space.set_priority(key, item, now)
        return CacheEntry(item.value, item.cost, item.created, item.hits)

    async def cache_put(
        self,
        namespace: str,
        key: str,
        value: bytes,
        cost_usd: float,
        eviction: Eviction,
        max_bytes: int,
        ttl_s: float,
        now: float,
    ) -> list[str]:
        space = self._caches.get(namespace)
        if space is None:
            space = self._caches[namespace] = _CacheSpace()
        space.drop_expired(now)
        old = space.remove(key)
        freq = old.freq if old is not None else max(space.ghost.pop(key, 0), 1)
        if len(value) > max_bytes:
            space.count_miss(key, freq)
            return [key]
        item = _CacheItem(bytes(value), float(cost_usd), now, now + ttl_s, eviction, freq)
        space.items[key] = item
        space.bytes += len(value)
        space.set_priority(key, item, now)
        heapq.heappush(space.by_expiry, (item.expires, key))
        if len(space.by_expiry) > 2 * len(space.items) + 64:  # mostly stale: rebuild
            space.by_expiry = [(i.expires, k) for k, i in space.items.items()]
            heapq.heapify(space.by_expiry)
        evicted: list[str] = []
        while space.bytes > max_bytes:
            gone = space.evict_lowest()
            if gone is None:
                break
            evicted.append(gone)
        return evicted

    async def cache_usage(self, namespace: str) -> tuple[int, int]:
        space = self._caches.get(namespace)
        return (len(space.items), space.bytes) if space is not None else (0, 0)

    # -- learning from feedback ----------------------------------------------------------
    # Persisted with spend: what an online layer learned survives a restart, as in Redis.

    async def claim_once(self, name: str, ttl_s: float, now: float) -> bool:
        expires = self._claims.get(name)
        if expires is not None and expires > now:
            return False
        if len(self._claims) > 100_000:  # bounded: drop the expired marks
            self._claims = {k: e for k, e in self._claims.items() if e > now}
        self._claims[name] = now + ttl_s
        return True

    async def stats_update(
        self, table: str, cells: list[str], value: float, discount: float, now: float
    ) -> None:
        stats = self._stats.setdefault(table, {})
        for cell in cells:
            stats[cell] = stats.get(cell, RunningStat()).updated(value, discount, now)
            self._mark_dirty(stats=(table, cell))

    async def stats_read(self, table: str) -> dict[str, RunningStat]:
        return dict(self._stats.get(table, {}))

    # -- the published policy ------------------------------------------------------------------
    # Not persisted: with the in-process store the policy file is the source (one process);
    # these serve the same contract as Redis for tests and for a process that follows itself.

    async def policy_publish(self, record: PolicyRecord) -> int:
        new_id = len(self._policies) + 1
        self._policies.append(dataclasses.replace(record, id=new_id))
        return new_id

    async def policy_latest_id(self) -> int:
        return len(self._policies)

    async def policy_get(self, policy_id: int) -> PolicyRecord | None:
        return self._policies[policy_id - 1] if 1 <= policy_id <= len(self._policies) else None

    async def policy_history(self, limit: int = 50) -> list[PolicyRecord]:
        return self._policies[::-1][: max(0, limit)]

    async def policy_report(self, report: PolicyReport) -> None:
        self._policy_reports.setdefault(report.id, {})[report.replica] = report
        self._policy_replicas[report.replica] = report

    async def policy_reports(self, policy_id: int) -> list[PolicyReport]:
        found = self._policy_reports.get(policy_id, {})
        return [found[name] for name in sorted(found)]

    async def policy_replicas(self) -> list[PolicyReport]:
        return [self._policy_replicas[name] for name in sorted(self._policy_replicas)]

    # -- lifecycle ---------------------------------------------------------------------------

    async def ping(self, timeout_s: float | None = None) -> None:
        """In the process: always reachable."""

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._snapshotter is not None:
            self._snapshotter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._snapshotter
            self._snapshotter = None
        if self._db is not None:
            try:
                await self.snapshot()
            finally:
                with self._db_lock:
                    self._db.close()
                self._db = None
