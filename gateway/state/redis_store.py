"""`RedisState`: the state store shared by several gateway replicas.

Every operation that must hold under concurrency is ONE Lua script (atomic in Redis), so two
replicas can never both take the last dollar of a budget.

Key layout (all under `prefix`, written `P` below):

    P:key:<id>                  hash   VirtualKey fields, each value JSON-encoded
    P:key-by-hash:<sha256>      string key id (the index used on every request)
    P:keys                      set    every key id
    P:has-keys                  string "1" once any key was created (never expires)
    P:budget:{<budget>}:spent   string settled spend, integer micro-dollars
    P:budget:{<budget>}:open    string sum of open reservations, micro-dollars
    P:budget:{<budget>}:amounts hash   reservation id -> micro-dollars
    P:budget:{<budget>}:expiry  zset   reservation id -> expires_at (unix seconds)
    P:win:<name>:<index>        string count of fixed window <index> (= floor(now / window))
    P:pacing:<name>             hash   updated_at (repr of a float), state (JSON)
    P:cache:{<ns>}:e:<key>      hash   value, cost, size, created, expires, hits, freq, eviction
    P:cache:{<ns>}:prio         zset   key -> eviction priority (lowest evicted first)
    P:cache:{<ns>}:exp          zset   key -> expires_at
    P:cache:{<ns>}:size         hash   key -> bytes of its value (kept apart from the entry, so
                                       the bookkeeping holds even after Redis expired the entry)
    P:cache:{<ns>}:meta         hash   bytes (sum of sizes), clock (GDSF's aging value L)
    P:cache:{<ns>}:ghost        hash   key -> misses counted while not cached
    P:cache:{<ns>}:ghost-at     zset   key -> last miss time (the bound drops the oldest)
    P:policy:seq                string the latest published policy id (what replicas poll)
    P:policy:v:<id>             hash   text, version, author, ts, note of published policy <id>
    P:policy:reports:<id>       hash   replica -> its outcome for <id> (PolicyReport as JSON)
    P:policy:replicas           hash   replica -> its latest outcome (what it serves now)

The `{<budget>}` hash tag keeps one budget's four keys in one cluster slot. Budget keys expire
`BUDGET_KEEP_S` after their last write; window keys two windows after theirs.

The key scripts (put, lookup) touch an index key they compute themselves, which standalone
Redis allows; budgets, windows and pacing declare all their keys, and so do the cache scripts
except the entry hashes, whose names they build from the namespace's `e:` prefix. Cache entry
hashes expire `CACHE_GRACE_S` after their TTL (memory back-stop: the scripts remove them at
their TTL); a namespace's other keys live as long as its longest-lived entry, ghosts a day.

Over 400 lines on purpose: one class implements the whole State protocol, and its Lua scripts
are read against the one key layout above, which split modules would each have to repeat.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
from collections.abc import Awaitable, Callable
from typing import Any, Concatenate, ParamSpec, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.state.base import (
    CACHE_GHOST_ENTRIES,
    CacheEntry,
    Eviction,
    PacingState,
    PolicyRecord,
    PolicyReport,
    Reservation,
    RunningStat,
    StateUnavailable,
    VirtualKey,
    WindowResult,
    from_micros,
    to_micros,
)
from gateway.state.memory import (
    WINDOW_EPS,
    key_from_fields,
    key_to_fields,
    pacing_from_json,
    pacing_to_json,
    window_position,
    window_retry_after,
)

BUDGET_KEEP_S = 40 * 86400  # a budget window idle this long is gone (months are <= 31 days)
CACHE_GRACE_S = 60  # Redis-side expiry of a cache entry, after its own TTL
CACHE_GHOST_KEEP_S = 86400  # an idle namespace's ghost table is gone after a day


# What an outage looks like from the client: refused or reset connections, timeouts, a
# server still loading its data (BusyLoadingError is a ConnectionError), a demoted primary.
# Anything else (a script error) is a bug and stays what it is.
_OUTAGE = (RedisConnectionError, RedisTimeoutError, ReadOnlyError, OSError, TimeoutError)

P = ParamSpec("P")
R = TypeVar("R")


def _unavailable_on_outage(
    method: Callable[Concatenate[RedisState, P], Awaitable[R]],
) -> Callable[Concatenate[RedisState, P], Awaitable[R]]:
    """Turn an outage into the `State` contract's StateUnavailable, naming the URL."""

    @functools.wraps(method)
    async def wrapper(self: RedisState, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await method(self, *args, **kwargs)
        except _OUTAGE as exc:
            raise self.unavailable(exc) from exc

    return wrapper


# KEYS: the policy id counter. ARGV: the version hashes' key prefix, field, value, ...
# One step: a replica that reads the new id always finds its version.
_POLICY_PUBLISH = """
local id = redis.call('INCR', KEYS[1])
redis.call('HSET', ARGV[1] .. id, unpack(ARGV, 2))
return id
"""

# KEYS: key hash, index key of the new secret hash, ids set, has-keys flag
# ARGV: index key prefix, id, secret hash (JSON), field, value, field, value, ...
_PUT_KEY = """
local old = redis.call('HGET', KEYS[1], 'secret_hash')
if old and old ~= ARGV[3] then
  redis.call('DEL', ARGV[1] .. cjson.decode(old))
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('SET', KEYS[2], ARGV[2])
redis.call('SADD', KEYS[3], ARGV[2])
redis.call('SET', KEYS[4], '1')
return 1
"""

# KEYS: index key; ARGV: key hash prefix. One round trip on the request path.
_KEY_BY_HASH = """
local id = redis.call('GET', KEYS[1])
if not id then return {} end
return redis.call('HGETALL', ARGV[1] .. id)
"""

# KEYS: key hash; ARGV: revoked_at (JSON). The first revocation time stands.
_REVOKE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local cur = redis.call('HGET', KEYS[1], 'revoked_at')
if not cur or cur == 'null' then
  redis.call('HSET', KEYS[1], 'revoked_at', ARGV[1])
end
return 1
"""

# Shared by the budget scripts: KEYS = spent, open, amounts, expiry.
_BUDGET_COMMON = """
local function remove(rid)
  local amt = redis.call('HGET', KEYS[3], rid)
  if amt then
    redis.call('HDEL', KEYS[3], rid)
    redis.call('ZREM', KEYS[4], rid)
    redis.call('DECRBY', KEYS[2], amt)
  end
  -- No reservation left: the sum is 0 by definition (heals any drift).
  if redis.call('HLEN', KEYS[3]) == 0 then redis.call('DEL', KEYS[2], KEYS[4]) end
end
local function keep(seconds)
  for i = 1, 4 do redis.call('EXPIRE', KEYS[i], seconds) end
end
"""

# ARGV: reservation id, amount (micros), limit (micros), expires_at, now, keep seconds
# -> {ok, spent, open}
_RESERVE = (
    _BUDGET_COMMON
    + """
local expired = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', ARGV[5])
for _, rid in ipairs(expired) do remove(rid) end
remove(ARGV[1])  -- reserving an id again replaces it
local spent = tonumber(redis.call('GET', KEYS[1]) or '0')
local open = tonumber(redis.call('GET', KEYS[2]) or '0')
local amount = tonumber(ARGV[2])
local ok = 0
if spent + open + amount <= tonumber(ARGV[3]) then
  ok = 1
  redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
  redis.call('ZADD', KEYS[4], ARGV[4], ARGV[1])
  open = redis.call('INCRBY', KEYS[2], ARGV[2])
end
keep(ARGV[6])
return {ok, string.format('%d', spent), string.format('%d', open)}
"""
)

# ARGV: reservation id, actual (micros), keep seconds -> settled spend (micros)
_SETTLE = (
    _BUDGET_COMMON
    + """
remove(ARGV[1])
local spent = redis.call('INCRBY', KEYS[1], ARGV[2])
keep(ARGV[3])
return spent
"""
)

# ARGV: reservation id
_RELEASE = (
    _BUDGET_COMMON
    + """
remove(ARGV[1])
return 1
"""
)

# ARGV: now -> {spent, open unexpired}; reads only.
_USAGE = """
local spent = redis.call('GET', KEYS[1]) or '0'
local open = 0
if redis.call('HLEN', KEYS[3]) > 0 then
  open = tonumber(redis.call('GET', KEYS[2]) or '0')
  local expired = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', ARGV[1])
  for _, rid in ipairs(expired) do
    open = open - tonumber(redis.call('HGET', KEYS[3], rid) or '0')
  end
end
return {spent, string.format('%d', open)}
"""

# KEYS: current window, previous window
# ARGV: amount, limit, weight of the previous window, epsilon, ttl ms -> {ok, prev, cur}
_WINDOW_HIT = """
local cur = redis.call('GET', KEYS[1]) or '0'
local prev = redis.call('GET', KEYS[2]) or '0'
if tonumber(prev) * tonumber(ARGV[3]) + tonumber(cur) + tonumber(ARGV[1])
    <= tonumber(ARGV[2]) + tonumber(ARGV[4]) then
  cur = redis.call('INCRBYFLOAT', KEYS[1], ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  return {1, prev, cur}
end
return {0, prev, cur}
"""

# KEYS: pacing hash; ARGV: expected updated_at, new updated_at, state JSON, keep seconds
_PACING_CAS = """
local cur = redis.call('HGET', KEYS[1], 'updated_at')
local cur_at = 0
if cur then cur_at = tonumber(cur) end
if cur_at ~= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'updated_at', ARGV[2], 'state', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
"""


# KEYS[1] = the table hash; ARGV = value, discount, now, keep s, then the cells. The same
# order of operations as RunningStat.updated, so both stores give the same doubles.
_STATS_UPDATE = """
local v, d = tonumber(ARGV[1]), tonumber(ARGV[2])
for i = 5, #ARGV do
  local cur = redis.call('HGET', KEYS[1], ARGV[i])
  local w, t, q = 0, 0, 0
  if cur then
    local a, b, c = string.match(cur, '([^,]+),([^,]+),([^,]+)')
    w, t, q = tonumber(a), tonumber(b), tonumber(c)
  end
  w = w * d + 1.0
  t = t * d + v
  q = q * d + v * v
  redis.call('HSET', KEYS[1], ARGV[i], string.format('%.17g,%.17g,%.17g,%s', w, t, q, ARGV[3]))
end
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
"""

STATS_KEEP_S = 30 * 86400  # a table nobody updated for this long is gone


# Shared by the cache scripts. KEYS = prio, exp, size, meta, ghost, ghost-at;
# ARGV[1] = the entry hash prefix. Same expression and order as `cache_priority`.
_CACHE_COMMON = """
local function priority(kind, clock, freq, cost, size, now)
  if kind == 'gdsf' then return clock + freq * cost / size end
  if kind == 'lec' then return freq * cost end
  return now
end
local function fmt(x) return string.format('%.17g', x) end
local function drop(key)
  redis.call('DEL', ARGV[1] .. key)
  redis.call('ZREM', KEYS[1], key)
  redis.call('ZREM', KEYS[2], key)
  local size = redis.call('HGET', KEYS[3], key)
  if size then
    redis.call('HDEL', KEYS[3], key)
    redis.call('HINCRBY', KEYS[4], 'bytes', -tonumber(size))
  end
end
local function count_miss(key, times, now, bound)
  redis.call('HINCRBY', KEYS[5], key, times)
  redis.call('ZADD', KEYS[6], now, key)
  local over = redis.call('ZCARD', KEYS[6]) - bound
  if over > 0 then
    local popped = redis.call('ZPOPMIN', KEYS[6], over)
    for i = 1, #popped, 2 do redis.call('HDEL', KEYS[5], popped[i]) end
  end
  redis.call('EXPIRE', KEYS[5], ARGV[3])
  redis.call('EXPIRE', KEYS[6], ARGV[3])
end
"""

# ARGV: entry prefix, key, ghost keep s, now, ghost bound -> {} | {value, cost, created, hits}
_CACHE_GET = (
    _CACHE_COMMON
    + """
local key, now = ARGV[2], tonumber(ARGV[4])
local ekey = ARGV[1] .. key
local f = redis.call('HMGET', ekey, 'value', 'cost', 'created', 'expires', 'size', 'eviction')
if f[1] and tonumber(f[4]) > now then
  local hits = redis.call('HINCRBY', ekey, 'hits', 1)
  local freq = redis.call('HINCRBY', ekey, 'freq', 1)
  local clock = tonumber(redis.call('HGET', KEYS[4], 'clock') or '0')
  local p = priority(f[6], clock, freq, tonumber(f[2]), tonumber(f[5]), now)
  redis.call('ZADD', KEYS[1], fmt(p), key)
  return {f[1], f[2], f[3], hits}
end
if f[1] then drop(key) end
count_miss(key, 1, now, tonumber(ARGV[5]))
return {}
"""
)

# ARGV: entry prefix, key, ghost keep s, now, ghost bound, value, cost, eviction, max bytes,
# ttl s, grace s -> evicted keys
_CACHE_PUT = (
    _CACHE_COMMON
    + """
local key, now, bound = ARGV[2], tonumber(ARGV[4]), tonumber(ARGV[5])
local value, cost, kind = ARGV[6], tonumber(ARGV[7]), ARGV[8]
local max_bytes, ttl = tonumber(ARGV[9]), tonumber(ARGV[10])
for _, k in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[4])) do drop(k) end
local ekey = ARGV[1] .. key
local freq = tonumber(redis.call('HGET', ekey, 'freq') or '0')
if redis.call('HEXISTS', KEYS[3], key) == 1 then
  freq = math.max(freq, 1)
  drop(key)
else
  freq = math.max(tonumber(redis.call('HGET', KEYS[5], key) or '0'), 1)
  redis.call('HDEL', KEYS[5], key)
  redis.call('ZREM', KEYS[6], key)
end
local size = #value
if size > max_bytes then
  count_miss(key, freq, now, bound)
  return {key}
end
local expires = now + ttl
redis.call('HSET', ekey, 'value', value, 'cost', ARGV[7], 'size', size, 'created', ARGV[4],
  'expires', fmt(expires), 'hits', 0, 'freq', freq, 'eviction', kind)
redis.call('PEXPIRE', ekey, math.ceil((ttl + tonumber(ARGV[11])) * 1000))
local clock = tonumber(redis.call('HGET', KEYS[4], 'clock') or '0')
redis.call('ZADD', KEYS[1], fmt(priority(kind, clock, freq, cost, size, now)), key)
redis.call('ZADD', KEYS[2], fmt(expires), key)
redis.call('HSET', KEYS[3], key, size)
local used = redis.call('HINCRBY', KEYS[4], 'bytes', size)
local evicted = {}
while used > max_bytes do
  local low = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  if #low == 0 then break end
  local k, p = low[1], tonumber(low[2])
  local f = redis.call('HMGET', ARGV[1] .. k, 'freq', 'eviction')
  drop(k)
  if f[2] == 'gdsf' and p > clock then
    clock = p
    redis.call('HSET', KEYS[4], 'clock', fmt(p))
  end
  count_miss(k, tonumber(f[1] or '1'), now, bound)
  evicted[#evicted + 1] = k
  used = tonumber(redis.call('HGET', KEYS[4], 'bytes'))
end
local keep = math.ceil((ttl + tonumber(ARGV[11])) * 1000)
for i = 1, 4 do
  if redis.call('PTTL', KEYS[i]) < keep then redis.call('PEXPIRE', KEYS[i], keep) end
end
return evicted
"""
)


def redact_url(url: str) -> str:
    """The URL without its password, fit for an error message or a log."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


class RedisState:
    """The Redis `State`. See the module docstring for the key layout."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "routegate",
        max_connections: int = 64,
        connect_timeout_s: float = 3.0,
        timeout_s: float = 2.0,
    ) -> None:
        self.url = url
        self.prefix = prefix
        # Bounded everywhere, so an outage (refused, or a host that answers nothing) fails a
        # request within seconds instead of hanging it: the connect, each command's reply, and
        # the wait for a free connection of the blocking pool (a burst waits rather than opening
        # thousands). No retries: the caller answers 503 and the client retries.
        limits: dict[str, Any] = {
            "timeout": connect_timeout_s + timeout_s,
            "socket_connect_timeout": connect_timeout_s,
            "socket_timeout": timeout_s,
            "health_check_interval": 30,
        }
        self._pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, decode_responses=True, **limits
        )
        self._redis = aioredis.Redis(connection_pool=self._pool)
        r = self._redis
        self._put_key = r.register_script(_PUT_KEY)
        self._key_by_hash = r.register_script(_KEY_BY_HASH)
        self._revoke = r.register_script(_REVOKE)
        self._reserve = r.register_script(_RESERVE)
        self._settle = r.register_script(_SETTLE)
        self._release = r.register_script(_RELEASE)
        self._usage = r.register_script(_USAGE)
        self._window_hit = r.register_script(_WINDOW_HIT)
        self._pacing_cas = r.register_script(_PACING_CAS)
        self._stats_update = r.register_script(_STATS_UPDATE)
        self._policy_publish = r.register_script(_POLICY_PUBLISH)
        # Cached answers are bytes: their own small pool, without decoding.
        self._raw_pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=max(4, max_connections // 4), decode_responses=False, **limits
        )
        self._raw = aioredis.Redis(connection_pool=self._raw_pool)
        self._cache_get = self._raw.register_script(_CACHE_GET)
        self._cache_put = self._raw.register_script(_CACHE_PUT)

    def unavailable(self, exc: BaseException) -> StateUnavailable:
        return StateUnavailable(
            f"cannot reach the Redis state store at {redact_url(self.url)}: {exc!r}"
        )

    async def ping(self, timeout_s: float | None = None) -> None:
        """Raise StateUnavailable, naming the URL, when Redis does not answer (in time)."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._redis.ping()
        except (RedisError, *_OUTAGE) as exc:
            raise self.unavailable(exc) from exc

    # -- key names ---------------------------------------------------------------------------

    def _k(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def _budget_keys(self, budget: str) -> list[str]:
        base = self._k("budget", "{" + budget + "}")
        return [f"{base}:spent", f"{base}:open", f"{base}:amounts", f"{base}:expiry"]

    # -- virtual keys ------------------------------------------------------------------------

    @_unavailable_on_outage
    async def put_key(self, key: VirtualKey) -> None:
        fields = key_to_fields(key)
        flat = [item for pair in fields.items() for item in pair]
        await self._put_key(
            keys=[
                self._k("key", key.id),
                self._k("key-by-hash", key.secret_hash),
                self._k("keys"),
                self._k("has-keys"),
            ],
            args=[self._k("key-by-hash", ""), key.id, fields["secret_hash"], *flat],
        )

    @_unavailable_on_outage
    async def key_by_hash(self, secret_hash: str) -> VirtualKey | None:
        flat = await self._key_by_hash(
            keys=[self._k("key-by-hash", secret_hash)], args=[self._k("key", "")]
        )
        if not flat:
            return None
        return key_from_fields(dict(zip(flat[::2], flat[1::2], strict=True)))

    @_unavailable_on_outage
    async def key_by_id(self, key_id: str) -> VirtualKey | None:
        fields = await self._redis.hgetall(self._k("key", key_id))
        return key_from_fields(fields) if fields else None

    @_unavailable_on_outage
    async def list_keys(self) -> list[VirtualKey]:
        ids = sorted(await self._redis.smembers(self._k("keys")))
        async with self._redis.pipeline(transaction=False) as pipe:
            for key_id in ids:
                pipe.hgetall(self._k("key", key_id))
            rows = await pipe.execute()
        keys = [key_from_fields(fields) for fields in rows if fields]
        return sorted(keys, key=lambda k: (k.created_at, k.id))

    @_unavailable_on_outage
    async def revoke_key(self, key_id: str, at: float) -> bool:
        done = await self._revoke(keys=[self._k("key", key_id)], args=[json.dumps(at)])
        return bool(done)

    @_unavailable_on_outage
    async def has_keys(self) -> bool:
        return bool(await self._redis.exists(self._k("has-keys")))

    # -- hard budgets ------------------------------------------------------------------------

    @_unavailable_on_outage
    async def reserve(
        self,
        budget: str,
        reservation_id: str,
        amount_usd: float,
        limit_usd: float,
        ttl_s: float,
        now: float,
    ) -> Reservation:
        limit = to_micros(limit_usd)
        ok, spent, open_ = await self._reserve(
            keys=self._budget_keys(budget),
            args=[
                reservation_id,
                to_micros(amount_usd),
                limit,
                repr(now + ttl_s),
                repr(now),
                BUDGET_KEEP_S,
            ],
        )
        return Reservation(
            bool(ok), from_micros(int(spent)), from_micros(int(open_)), from_micros(limit)
        )

    @_unavailable_on_outage
    async def settle(self, budget: str, reservation_id: str, actual_usd: float) -> float:
        spent = await self._settle(
            keys=self._budget_keys(budget),
            args=[reservation_id, to_micros(actual_usd), BUDGET_KEEP_S],
        )
        return from_micros(int(spent))

    @_unavailable_on_outage
    async def release(self, budget: str, reservation_id: str) -> None:
        await self._release(keys=self._budget_keys(budget), args=[reservation_id])

    @_unavailable_on_outage
    async def budget_usage(self, budget: str, now: float) -> tuple[float, float]:
        spent, open_ = await self._usage(keys=self._budget_keys(budget), args=[repr(now)])
        return from_micros(int(spent)), from_micros(int(open_))

    # -- rate limits -------------------------------------------------------------------------

    def _window_keys(self, name: str, index: int) -> list[str]:
        return [self._k("win", name, str(index)), self._k("win", name, str(index - 1))]

    @staticmethod
    def _window_ttl_ms(window_s: float) -> int:
        # A fixed window is read until the end of the next one: two windows, plus slack.
        return math.ceil(window_s * 2000) + 1000

    @_unavailable_on_outage
    async def window_hit(
        self, name: str, amount: float, limit: float, window_s: float, now: float
    ) -> WindowResult:
        index, weight = window_position(window_s, now)
        ok, prev_s, cur_s = await self._window_hit(
            keys=self._window_keys(name, index),
            args=[
                repr(amount),
                repr(limit),
                repr(weight),
                repr(WINDOW_EPS),
                self._window_ttl_ms(window_s),
            ],
        )
        prev, cur = float(prev_s), float(cur_s)
        used = prev * weight + cur
        if ok:
            return WindowResult(True, used)
        return WindowResult(
            False, used, window_retry_after(prev, cur, weight, amount, limit, window_s)
        )

    @_unavailable_on_outage
    async def window_add(self, name: str, amount: float, window_s: float, now: float) -> None:
        index, _ = window_position(window_s, now)
        cur_key = self._window_keys(name, index)[0]
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incrbyfloat(cur_key, amount)
            pipe.pexpire(cur_key, self._window_ttl_ms(window_s))
            await pipe.execute()

    @_unavailable_on_outage
    async def window_used(self, name: str, window_s: float, now: float) -> float:
        index, weight = window_position(window_s, now)
        cur, prev = await self._redis.mget(self._window_keys(name, index))
        return float(prev or 0) * weight + float(cur or 0)

    # -- pacing ------------------------------------------------------------------------------

    @_unavailable_on_outage
    async def pacing_get(self, name: str) -> PacingState | None:
        text = await self._redis.hget(self._k("pacing", name), "state")
        return pacing_from_json(text) if text else None

    @_unavailable_on_outage
    async def pacing_update(self, name: str, expected_updated_at: float, new: PacingState) -> bool:
        done = await self._pacing_cas(
            keys=[self._k("pacing", name)],
            args=[
                repr(float(expected_updated_at)),
                repr(float(new.updated_at)),
                pacing_to_json(new),
                BUDGET_KEEP_S,
            ],
        )
        return bool(done)

    # -- response cache ----------------------------------------------------------------------

    def _cache_keys(self, namespace: str) -> tuple[str, list[str]]:
        """(entry hash prefix, [prio, exp, size, meta, ghost, ghost-at])."""
        base = self._k("cache", "{" + namespace + "}")
        names = ["prio", "exp", "size", "meta", "ghost", "ghost-at"]
        return f"{base}:e:", [f"{base}:{n}" for n in names]

    @_unavailable_on_outage
    async def cache_get(self, namespace: str, key: str, now: float) -> CacheEntry | None:
        prefix, keys = self._cache_keys(namespace)
        row = await self._cache_get(
            keys=keys, args=[prefix, key, CACHE_GHOST_KEEP_S, repr(now), CACHE_GHOST_ENTRIES]
        )
        if not row:
            return None
        value, cost, created, hits = row
        return CacheEntry(bytes(value), float(cost), float(created), int(hits))

    @_unavailable_on_outage
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
        prefix, keys = self._cache_keys(namespace)
        evicted = await self._cache_put(
            keys=keys,
            args=[
                prefix,
                key,
                CACHE_GHOST_KEEP_S,
                repr(now),
                CACHE_GHOST_ENTRIES,
                value,
                repr(float(cost_usd)),
                eviction,
                max_bytes,
                repr(float(ttl_s)),
                CACHE_GRACE_S,
            ],
        )
        return [k.decode() for k in evicted]

    @_unavailable_on_outage
    async def cache_usage(self, namespace: str) -> tuple[int, int]:
        _, keys = self._cache_keys(namespace)
        async with self._raw.pipeline(transaction=True) as pipe:
            pipe.hlen(keys[2])
            pipe.hget(keys[3], "bytes")
            entries, used = await pipe.execute()
        return int(entries), int(used or 0)

    # -- learning from feedback ----------------------------------------------------------

    @_unavailable_on_outage
    async def claim_once(self, name: str, ttl_s: float, now: float) -> bool:
        ttl_ms = max(1, int(ttl_s * 1000))
        return bool(await self._redis.set(self._k("claim", name), "1", nx=True, px=ttl_ms))

    @_unavailable_on_outage
    async def stats_update(
        self, table: str, cells: list[str], value: float, discount: float, now: float
    ) -> None:
        head = [repr(float(value)), repr(float(discount)), repr(float(now)), STATS_KEEP_S]
        await self._stats_update(keys=[self._k("stats", table)], args=[*head, *cells])

    @_unavailable_on_outage
    async def stats_read(self, table: str) -> dict[str, RunningStat]:
        raw = await self._redis.hgetall(self._k("stats", table))
        out: dict[str, RunningStat] = {}
        for cell, text in raw.items():
            w, t, q, at = (float(x) for x in str(text).split(","))
            out[str(cell)] = RunningStat(w, t, q, at)
        return out

    # -- the published policy ------------------------------------------------------------------

    @_unavailable_on_outage
    async def policy_publish(self, record: PolicyRecord) -> int:
        fields = {
            "text": record.text, "version": record.version, "author": record.author,
            "ts": repr(float(record.ts)), "note": record.note,
        }  # fmt: skip
        flat = [item for pair in fields.items() for item in pair]
        return int(
            await self._policy_publish(
                keys=[self._k("policy", "seq")], args=[self._k("policy", "v", ""), *flat]
            )
        )

    @_unavailable_on_outage
    async def policy_latest_id(self) -> int:
        return int(await self._redis.get(self._k("policy", "seq")) or 0)

    @staticmethod
    def _policy_record(policy_id: int, raw: dict[str, str]) -> PolicyRecord | None:
        if not raw:
            return None
        return PolicyRecord(
            policy_id, raw["text"], raw["version"], raw["author"], float(raw["ts"]),
            raw.get("note", ""),
        )  # fmt: skip

    @_unavailable_on_outage
    async def policy_get(self, policy_id: int) -> PolicyRecord | None:
        raw = await self._redis.hgetall(self._k("policy", "v", str(policy_id)))
        return self._policy_record(policy_id, raw)

    @_unavailable_on_outage
    async def policy_history(self, limit: int = 50) -> list[PolicyRecord]:
        latest = int(await self._redis.get(self._k("policy", "seq")) or 0)
        ids = list(range(latest, max(0, latest - max(0, limit)), -1))
        if not ids:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for policy_id in ids:
                pipe.hgetall(self._k("policy", "v", str(policy_id)))
            raws = await pipe.execute()
        found = (self._policy_record(i, raw) for i, raw in zip(ids, raws, strict=True))
        return [record for record in found if record is not None]

    @_unavailable_on_outage
    async def policy_report(self, report: PolicyReport) -> None:
        text = json.dumps(report.as_dict())
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._k("policy", "reports", str(report.id)), report.replica, text)
            pipe.hset(self._k("policy", "replicas"), report.replica, text)
            await pipe.execute()

    @staticmethod
    def _reports(raw: dict[str, str]) -> list[PolicyReport]:
        return [PolicyReport.from_dict(json.loads(raw[name])) for name in sorted(raw)]

    @_unavailable_on_outage
    async def policy_reports(self, policy_id: int) -> list[PolicyReport]:
        return self._reports(
            await self._redis.hgetall(self._k("policy", "reports", str(policy_id)))
        )

    @_unavailable_on_outage
    async def policy_replicas(self) -> list[PolicyReport]:
        return self._reports(await self._redis.hgetall(self._k("policy", "replicas")))

    # -- lifecycle ---------------------------------------------------------------------------

    async def aclose(self) -> None:
        await self._redis.aclose()
        await self._pool.disconnect()
        await self._raw.aclose()
        await self._raw_pool.disconnect()
