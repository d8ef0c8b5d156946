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

The `{<budget>}` hash tag keeps one budget's four keys in one cluster slot. Budget keys expire
`BUDGET_KEEP_S` after their last write; window keys two windows after theirs.

The key scripts (put, lookup) touch an index key they compute themselves, which standalone
Redis allows; budgets, windows and pacing declare all their keys.
"""

from __future__ import annotations

import json
import math
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.state.base import (
    PacingState,
    Reservation,
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


class StateUnavailable(RuntimeError):
    """The configured state store cannot be reached."""


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
        connect_timeout_s: float = 5.0,
    ) -> None:
        self.url = url
        self.prefix = prefix
        # A blocking pool: a burst waits for a connection instead of opening thousands.
        self._pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=30,
            decode_responses=True,
            socket_connect_timeout=connect_timeout_s,
            health_check_interval=30,
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

    async def ping(self) -> None:
        """Raise StateUnavailable, naming the URL, when Redis does not answer."""
        try:
            await self._redis.ping()
        except (RedisError, OSError) as exc:
            raise StateUnavailable(
                f"cannot reach the Redis state store at {redact_url(self.url)}: {exc}"
            ) from exc

    # -- key names ---------------------------------------------------------------------------

    def _k(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def _budget_keys(self, budget: str) -> list[str]:
        base = self._k("budget", "{" + budget + "}")
        return [f"{base}:spent", f"{base}:open", f"{base}:amounts", f"{base}:expiry"]

    # -- virtual keys ------------------------------------------------------------------------

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

    async def key_by_hash(self, secret_hash: str) -> VirtualKey | None:
        flat = await self._key_by_hash(
            keys=[self._k("key-by-hash", secret_hash)], args=[self._k("key", "")]
        )
        if not flat:
            return None
        return key_from_fields(dict(zip(flat[::2], flat[1::2], strict=True)))

    async def key_by_id(self, key_id: str) -> VirtualKey | None:
        fields = await self._redis.hgetall(self._k("key", key_id))
        return key_from_fields(fields) if fields else None

    async def list_keys(self) -> list[VirtualKey]:
        ids = sorted(await self._redis.smembers(self._k("keys")))
        async with self._redis.pipeline(transaction=False) as pipe:
            for key_id in ids:
                pipe.hgetall(self._k("key", key_id))
            rows = await pipe.execute()
        keys = [key_from_fields(fields) for fields in rows if fields]
        return sorted(keys, key=lambda k: (k.created_at, k.id))

    async def revoke_key(self, key_id: str, at: float) -> bool:
        done = await self._revoke(keys=[self._k("key", key_id)], args=[json.dumps(at)])
        return bool(done)

    async def has_keys(self) -> bool:
        return bool(await self._redis.exists(self._k("has-keys")))

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

    async def settle(self, budget: str, reservation_id: str, actual_usd: float) -> float:
        spent = await self._settle(
            keys=self._budget_keys(budget),
            args=[reservation_id, to_micros(actual_usd), BUDGET_KEEP_S],
        )
        return from_micros(int(spent))

    async def release(self, budget: str, reservation_id: str) -> None:
        await self._release(keys=self._budget_keys(budget), args=[reservation_id])

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

    async def window_add(self, name: str, amount: float, window_s: float, now: float) -> None:
        index, _ = window_position(window_s, now)
        cur_key = self._window_keys(name, index)[0]
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incrbyfloat(cur_key, amount)
            pipe.pexpire(cur_key, self._window_ttl_ms(window_s))
            await pipe.execute()

    async def window_used(self, name: str, window_s: float, now: float) -> float:
        index, weight = window_position(window_s, now)
        cur, prev = await self._redis.mget(self._window_keys(name, index))
        return float(prev or 0) * weight + float(cur or 0)

    # -- pacing ------------------------------------------------------------------------------

    async def pacing_get(self, name: str) -> PacingState | None:
        text = await self._redis.hget(self._k("pacing", name), "state")
        return pacing_from_json(text) if text else None

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

    # -- lifecycle ---------------------------------------------------------------------------

    async def aclose(self) -> None:
        await self._redis.aclose()
        await self._pool.disconnect()
