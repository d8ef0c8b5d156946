"""Budget pacing: spread a key's or route's budget over its period instead of spending it all
in the morning.

Cost-aware routing scores a model as `quality - lambda * cost`. Pacing scales a route's base
lambda by a multiplier that a controller moves with the spend: ahead of the plan it rises (cheaper
models win), behind the plan it falls (stronger models win), and 1.0 is neutral.

The controller works on the normalised error `e = spent / budget - planned_fraction(now)` and
sets `log(multiplier) = KP * e + integral`, where the integral gathers `KI * e` per period of
elapsed time (so gains mean the same for a day and a month). Working in log space makes the update
multiplicative (the usual dual-descent form for a budget constraint). The result is clamped to
[min_multiplier, max_multiplier]; the integral stops growing while the output is clamped
(anti-windup); one update moves the multiplier by at most a fixed factor and elapsed time is
capped, so a burst or a long idle gap cannot swing it; and as the spend nears the budget the
multiplier is pushed to the maximum whatever the plan says, because the hard budget will refuse
requests soon after.

State lives in the shared `State` (one record per paced key or route), updated by
compare-and-set at most once per `update_interval_s` across all replicas. `next_state` is the
pure step; `PacingController` adds caching and the store round trip.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from functools import lru_cache

from gateway.admission.periods import period_bounds
from gateway.state.base import PacingState, State
from policies.schema import PacingConfig

# Gains on the normalised error (fraction of the budget), with time measured in periods. Tuned
# with bench/pacing_sim.py: KP alone leaves a steady lag when traffic drifts from the plan's shape,
# KI removes it. Where a unit step of log(multiplier) moves the spend rate by about one budget per
# period (the bench's traffic), the loop is about critically damped with a ~15-minute time
# constant on a day; more traffic headroom makes it faster, the step cap keeps it tame.
KP = 100.0
KI = 2500.0
# One update changes log(multiplier) by at most this much (x1.28): a burst of settled spend in
# one interval nudges lambda, it does not slam it.
MAX_LOG_STEP = 0.25
# Elapsed time counted by one update at most, as a fraction of the period: after an idle gap
# the integral must not jump.
MAX_DT_FRACTION = 0.01
# Once spend passes (1 - EXHAUSTION_MARGIN) of the budget, the multiplier's floor rises from
# neutral (1.0) to the maximum, reached when the budget is spent.
EXHAUSTION_MARGIN = 0.02
# Plan weights of Saturday and Sunday under the `weekday` plan (weekdays weigh 1).
WEEKEND_WEIGHT = 0.2

WINDOW_KEY = "window_start"  # PacingState.extra: start of the period window the state is for


def _weekday_weight(weekday: int) -> float:
    return WEEKEND_WEIGHT if weekday >= 5 else 1.0


@lru_cache(maxsize=64)
def _knots(period: str, plan: str | tuple[float, ...], start_ts: float) -> tuple[float, ...]:
    """Cumulative planned fraction at the boundaries of the plan's equal slices of the window
    starting at `start_ts` (first 0.0, last 1.0). Cached: a window's knots never change."""
    start, end = period_bounds(period, start_ts)
    # `learned` reaches here only without its weights (gateway/admission/learned_plan.py gives
    # them as a custom curve): its fallback is uniform.
    if plan in ("uniform", "learned") or (plan == "weekday" and period == "day"):
        weights: list[float] = [1.0]  # a day's own weight does not shape the day
    elif plan == "weekday":
        days = (end - start).days
        weights = [_weekday_weight((start + timedelta(days=i)).weekday()) for i in range(days)]
    elif isinstance(plan, tuple):
        weights = list(plan)
    else:
        raise ValueError(f"unknown pacing plan {plan!r}")
    total = sum(weights)
    knots = [0.0]
    acc = 0.0
    for w in weights:
        acc += w
        knots.append(acc / total)
    knots[-1] = 1.0
    return tuple(knots)


_last_bounds: dict[str, tuple[float, float]] = {}


def _bounds(period: str, now: float) -> tuple[float, float]:
    """`period_bounds` as unix seconds, remembering the last window per period: the gateway and
    the bench ask for the same window over and over, and datetime arithmetic is not free."""
    last = _last_bounds.get(period)
    if last is not None and last[0] <= now < last[1]:
        return last
    start, end = period_bounds(period, now)
    bounds = _last_bounds[period] = (start.timestamp(), end.timestamp())
    return bounds


def planned_fraction(config: PacingConfig, now: float) -> float:
    """Fraction of the period's budget the plan says should be spent by `now` (unix seconds):
    piecewise linear over the plan's equal slices of the current period window."""
    start_ts, end_ts = _bounds(config.period, now)
    plan = tuple(config.plan) if isinstance(config.plan, list) else config.plan
    knots = _knots(config.period, plan, start_ts)
    slices = len(knots) - 1
    pos = min(max((now - start_ts) / (end_ts - start_ts), 0.0), 1.0) * slices
    i = min(int(pos), slices - 1)
    return knots[i] + (knots[i + 1] - knots[i]) * (pos - i)


def _exhaustion_floor(spent_fraction: float, log_max: float) -> float:
    """Lowest allowed log(multiplier) given the share of the budget already spent: 0 (neutral)
    up to 1 - EXHAUSTION_MARGIN, rising linearly to log(max) at the full budget."""
    ramp = (spent_fraction - (1.0 - EXHAUSTION_MARGIN)) / EXHAUSTION_MARGIN
    if ramp <= 0.0:
        return -math.inf
    return min(ramp, 1.0) * max(log_max, 0.0)


def next_state(
    config: PacingConfig, prev: PacingState, spent_usd: float, now: float
) -> PacingState:
    """One controller step: the new multiplier given `spent_usd` so far in the period window
    holding `now`. Pure; the caller decides how often to call it (see `PacingController`)."""
    start_ts, end_ts = _bounds(config.period, now)
    period_s = end_ts - start_ts
    log_min, log_max = math.log(config.min_multiplier), math.log(config.max_multiplier)

    same_window = prev.updated_at > 0.0 and prev.extra.get(WINDOW_KEY) == start_ts
    if same_window:
        prev_u = math.log(
            min(max(prev.price_multiplier, config.min_multiplier), config.max_multiplier)
        )
        integral = prev.integral
        dt = min(max(now - prev.updated_at, 0.0), MAX_DT_FRACTION * period_s) / period_s
    else:
        # A new window (or no state yet): spend restarts at zero, so start neutral. The end of
        # the last window (often pinned high by exhaustion) says nothing about this one.
        prev_u, integral, dt = 0.0, 0.0, 0.0

    spent_fraction = spent_usd / config.budget_usd
    error = spent_fraction - planned_fraction(config, now)

    # Integrate, but not further into a bound the output already sits on (anti-windup).
    candidate = integral + KI * error * dt
    raw = KP * error + candidate
    if not ((raw > log_max and error > 0.0) or (raw < log_min and error < 0.0)):
        integral = candidate
    integral = min(max(integral, log_min), log_max)

    u = min(max(KP * error + integral, log_min), log_max)
    if same_window:
        u = min(max(u, prev_u - MAX_LOG_STEP), prev_u + MAX_LOG_STEP)
    u = max(u, _exhaustion_floor(spent_fraction, log_max))
    u = min(max(u, log_min), log_max)

    extra = dict(prev.extra) if same_window else {}
    extra[WINDOW_KEY] = start_ts
    extra["error"] = error
    return PacingState(price_multiplier=math.exp(u), integral=integral, updated_at=now, extra=extra)


class PacingController:
    """The multiplier for one paced key or route, shared by every replica through `State`.

    Between updates the multiplier comes from a local cache, so the hot path costs nothing; the
    store is read at most once per `update_interval_s` per process. When the stored state is
    stale this process computes the next step and writes it by compare-and-set; if another
    replica won the race, its value is used instead (one update per interval overall).
    """

    def __init__(
        self,
        state: State,
        name: str,
        config: PacingConfig,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.state = state
        self.name = name
        self.config = config
        self.clock = clock
        self._cached: PacingState | None = None
        self._next_check = -math.inf  # local time of the next store read
        self._lock = asyncio.Lock()
        self.reads = 0  # store reads, for tests and the bench
        self.updates = 0  # successful compare-and-set writes by this controller

    def planned_fraction(self, now: float | None = None) -> float:
        return planned_fraction(self.config, self.clock() if now is None else now)

    async def multiplier(self, spent: float | Callable[[], Awaitable[float]]) -> float:
        """The current multiplier, given the spend so far in the current period window: a
        number, or a coroutine function read only when the multiplier is due for an update."""
        now = self.clock()
        cached = self._cached
        if cached is not None and now < self._next_check:
            return cached.price_multiplier
        if cached is not None and self._lock.locked():
            return cached.price_multiplier  # another task is refreshing; don't queue behind it
        async with self._lock:
            if self._cached is not None and now < self._next_check:
                return self._cached.price_multiplier
            return (await self._refresh(spent, now)).price_multiplier

    async def _refresh(
        self, spent: float | Callable[[], Awaitable[float]], now: float
    ) -> PacingState:
        interval = self.config.update_interval_s
        self._next_check = now + interval
        stored = await self.state.pacing_get(self.name)
        self.reads += 1
        if (
            stored is not None
            and now - stored.updated_at < interval
            and stored.extra.get(WINDOW_KEY, -math.inf) >= _bounds(self.config.period, now)[0]
        ):
            # Fresh (another replica or we updated it lately) and not from a past window: a new
            # period must not start with the last one's multiplier, often pinned at the max.
            self._cached = stored
            return stored
        prev = stored if stored is not None else PacingState()
        # Updated_at stays increasing with replica clocks a little apart: a state written by a
        # clock ahead of ours reads fresh (and its window is not older than ours).
        spent_usd = await spent() if callable(spent) else spent
        new = next_state(self.config, prev, spent_usd, now)
        if await self.state.pacing_update(self.name, prev.updated_at, new):
            self.updates += 1
            self._cached = new
            return new
        theirs = await self.state.pacing_get(self.name)  # lost the race: use the winner's
        self.reads += 1
        self._cached = theirs if theirs is not None else new
        return self._cached
