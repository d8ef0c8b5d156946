"""Shared state: virtual keys, budget counters, rate windows and pacing state.

Two implementations with one behaviour: `MemoryState` (one process, the embedded default) and
`RedisState` (several gateway replicas). Every operation that must hold under concurrency is a
single atomic step in both (one Lua script in Redis; no await inside the critical section in
memory). The same test suite runs against both.

Money is in USD floats in the interface; implementations store integer micro-dollars
(`to_micros`) so that concurrent additions are exact. The response cache keeps its costs as
floats: they only rank entries, nobody is billed from them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol


def to_micros(usd: float) -> int:
    """USD -> integer micro-dollars, rounding up: a reservation never under-counts."""
    micros = usd * 1_000_000
    whole = int(micros)
    return whole + (1 if micros > whole + 1e-9 else 0)


def from_micros(micros: int) -> float:
    return micros / 1_000_000


@dataclass(slots=True)
class VirtualKey:
    id: str  # public id, e.g. "key_3f9a1c2b"; what logs and reports show
    team: str
    secret_hash: str  # sha256 hex of the secret; the secret itself is never stored
    secret_prefix: str  # first characters of the secret, to recognise it in listings
    budget_usd: float | None = None  # None: no budget
    period: str = "month"  # day | week | month | total
    rpm: int | None = None  # requests per minute
    tpm: int | None = None  # tokens (prompt + completion) per minute
    routes: list[str] | None = None  # None: every route and model
    name: str | None = None
    created_at: float = 0.0
    revoked_at: float | None = None
    pacing: dict[str, object] | None = None  # a PacingConfig as a dict, when the key is paced

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(slots=True)
class Reservation:
    ok: bool
    spent_usd: float  # settled spend in the budget window, after this call
    reserved_usd: float  # open reservations in the window, including this one if ok
    limit_usd: float


@dataclass(slots=True)
class WindowResult:
    ok: bool
    used: float  # weighted count in the sliding window, including this hit if ok
    retry_after_s: float = 0.0  # when refused: how long until the hit would fit


@dataclass(slots=True)
class PacingState:
    price_multiplier: float = 1.0  # lambda
    integral: float = 0.0  # the PI controller's accumulated error
    updated_at: float = 0.0  # unix time of the last update
    extra: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RunningStat:
    """A discounted running statistic of one cell (e.g. an online router's residuals for one
    context and model): each update multiplies the old sums by `discount`, then adds the new
    value, so old observations fade and the statistic follows a value that changes."""

    weight: float = 0.0  # sum of discounted counts
    total: float = 0.0  # sum of discounted values
    total_sq: float = 0.0  # sum of discounted squares
    updated_at: float = 0.0

    @property
    def mean(self) -> float:
        return self.total / self.weight if self.weight > 0 else 0.0

    def updated(self, value: float, discount: float, now: float) -> RunningStat:
        """The pure step both stores apply atomically (Redis: the same order in Lua)."""
        return RunningStat(
            self.weight * discount + 1.0,
            self.total * discount + value,
            self.total_sq * discount + value * value,
            now,
        )


Eviction = Literal["gdsf", "lec", "lru"]

# Misses remembered per cache namespace (the "ghost" frequency table), so a query's frequency
# is known when it is first stored. Bounded: the least recently missed key is forgotten first.
CACHE_GHOST_ENTRIES = 10_000


@dataclass(slots=True)
class CacheEntry:
    value: bytes
    cost_usd: float  # what a miss would cost: the eviction weight
    created_at: float
    hits: int  # hits served by this entry, this one included


def cache_priority(
    eviction: str, clock: float, freq: float, cost_usd: float, size: int, now: float
) -> float:
    """The eviction priority of an entry; the lowest is evicted first. The Redis scripts compute
    the same expression in Lua (same operation order, so the same doubles).

    gdsf: Greedy-Dual-Size-Frequency, H = L + freq * cost / size (L: the namespace's aging clock)
    lec:  Least-Expected-Cost, freq * cost (expected cost of dropping it)
    lru:  the last access time"""
    if eviction == "gdsf":
        return clock + freq * cost_usd / size
    if eviction == "lec":
        return freq * cost_usd
    return now


@dataclass(frozen=True, slots=True)
class PolicyRecord:
    """A policy version published to the shared store (`routegate policy apply`, the policy
    page): every replica loads the latest one. `id` is the store's own number, 1, 2, 3, ...
    (0 before publishing); `version` is Runtime.version, the hash of `text`."""

    id: int
    text: str
    version: str
    author: str
    ts: float
    note: str = ""

    def summary(self) -> dict[str, object]:
        """Without the text, for listings."""
        return {
            "id": self.id, "version": self.version, "author": self.author, "ts": self.ts,
            "note": self.note,
        }  # fmt: skip


@dataclass(frozen=True, slots=True)
class PolicyReport:
    """One replica's outcome for one published version: loaded (`ok`) or rejected (`error`,
    the validator's messages), and what it serves after it (a rejecting replica keeps its
    previous version; `serving_id` None: its own file)."""

    replica: str
    id: int
    ok: bool
    error: str | None
    ts: float
    serving_id: int | None
    serving_version: str

    def as_dict(self) -> dict[str, object]:
        return {
            "replica": self.replica, "id": self.id, "ok": self.ok, "error": self.error,
            "ts": self.ts, "serving_id": self.serving_id, "serving_version": self.serving_version,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> PolicyReport:
        serving = data.get("serving_id")
        error = data.get("error")
        return cls(
            str(data["replica"]), int(str(data["id"])), bool(data["ok"]),
            None if error is None else str(error), float(str(data["ts"])),
            None if serving is None else int(str(serving)), str(data.get("serving_version", "")),
        )  # fmt: skip


class StateUnavailable(RuntimeError):
    """The state store cannot be reached (refused, timed out, loading). Every `State` method
    may raise it; the gateway answers 503 `state_unavailable` and fails closed."""


class State(Protocol):
    # -- virtual keys -----------------------------------------------------------------------
    async def put_key(self, key: VirtualKey) -> None:
        """Create or replace a key (by id), and index it by its secret hash."""

    async def key_by_hash(self, secret_hash: str) -> VirtualKey | None: ...

    async def key_by_id(self, key_id: str) -> VirtualKey | None: ...

    async def list_keys(self) -> list[VirtualKey]: ...

    async def revoke_key(self, key_id: str, at: float) -> bool:
        """Mark revoked; False if there is no such key."""

    async def has_keys(self) -> bool:
        """True once any key was ever created (the gateway then requires one)."""

    # -- hard budgets: reserve, then settle -------------------------------------------------
    async def reserve(
        self,
        budget: str,  # e.g. "key:key_3f9a1c2b:2026-11" (owner and period window)
        reservation_id: str,
        amount_usd: float,
        limit_usd: float,
        ttl_s: float,
        now: float,
    ) -> Reservation:
        """Atomically: drop expired reservations of `budget`; if settled spend + open
        reservations + amount <= limit, record the reservation (expiring at now + ttl_s)."""

    async def settle(self, budget: str, reservation_id: str, actual_usd: float) -> float:
        """Atomically: remove the reservation (if still there) and add the actual cost to the
        settled spend. Returns the settled spend. Always adds: spend is never lost, even when
        the reservation expired meanwhile. Idempotent per reservation id is NOT required:
        the caller settles once."""

    async def release(self, budget: str, reservation_id: str) -> None:
        """Drop a reservation without spending (the request never reached a model)."""

    async def budget_usage(self, budget: str, now: float) -> tuple[float, float]:
        """(settled spend, open unexpired reservations) of a budget, in USD."""

    # -- rate limits: sliding windows -------------------------------------------------------
    async def window_hit(
        self, name: str, amount: float, limit: float, window_s: float, now: float
    ) -> WindowResult:
        """Atomically add `amount` to the sliding window `name` if the weighted count
        (previous fixed window weighted by its remaining overlap, plus the current one)
        stays <= limit; otherwise refuse and say when it would fit."""

    async def window_add(self, name: str, amount: float, window_s: float, now: float) -> None:
        """Add without checking (tokens known only after the response)."""

    async def window_used(self, name: str, window_s: float, now: float) -> float: ...

    # -- pacing -----------------------------------------------------------------------------
    async def pacing_get(self, name: str) -> PacingState | None: ...

    async def pacing_update(self, name: str, expected_updated_at: float, new: PacingState) -> bool:
        """Compare-and-set: store `new` only if the stored state's updated_at equals
        `expected_updated_at` (0.0 when none is stored). False when another replica won."""

    # -- response cache ---------------------------------------------------------------------
    async def cache_get(self, namespace: str, key: str, now: float) -> CacheEntry | None:
        """Atomically: a live entry counts the hit (hits + 1, frequency + 1) and gets its new
        eviction priority; an expired one is removed and, like an absent one, is a miss. A
        miss adds 1 to the key's count in the namespace's bounded ghost table."""

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
        """Atomically: drop expired entries, store (or replace) the entry with the frequency
        its ghost count carried (at least 1), then evict the lowest-priority entries until the
        namespace's values fit `max_bytes`. Returns the evicted keys (`key` itself when the new
        entry was the lowest, or alone is larger than max_bytes). An evicted entry's frequency
        goes back to the ghost table; an expired one's is forgotten."""

    async def cache_usage(self, namespace: str) -> tuple[int, int]:
        """(entries, bytes of their values) held in the namespace, expired ones included until
        the next put sweeps them."""

    # -- learning from feedback -------------------------------------------------------------
    async def claim_once(self, name: str, ttl_s: float, now: float) -> bool:
        """Atomically: True the first time `name` is claimed within `ttl_s`, False after (an
        idempotency mark, e.g. one learning update per request and feedback source)."""

    async def stats_update(
        self, table: str, cells: list[str], value: float, discount: float, now: float
    ) -> None:
        """Atomically apply `RunningStat.updated` to each of `cells` of `table` (one step,
        one round trip)."""

    async def stats_read(self, table: str) -> dict[str, RunningStat]:
        """Every cell of `table` (empty when there is none), in one round trip."""

    # -- the published policy (several replicas, one policy) ---------------------------------
    async def policy_publish(self, record: PolicyRecord) -> int:
        """Atomically give `record` the next id (1, 2, ...; its own `id` is ignored) and make it
        the latest. Returns the id."""

    async def policy_latest_id(self) -> int:
        """The latest published id, 0 when none: what replicas poll (one small read)."""

    async def policy_get(self, policy_id: int) -> PolicyRecord | None: ...

    async def policy_history(self, limit: int = 50) -> list[PolicyRecord]:
        """The latest `limit` published versions, newest first."""

    async def policy_report(self, report: PolicyReport) -> None:
        """Record a replica's outcome for a version, and as that replica's latest word."""

    async def policy_reports(self, policy_id: int) -> list[PolicyReport]:
        """Every replica's outcome for one version, by replica name."""

    async def policy_replicas(self) -> list[PolicyReport]:
        """Each replica's latest report (what it serves now), by replica name."""

    # -- lifecycle --------------------------------------------------------------------------
    async def ping(self, timeout_s: float | None = None) -> None:
        """Raise StateUnavailable unless the store answers within `timeout_s` (readiness)."""

    async def aclose(self) -> None: ...
