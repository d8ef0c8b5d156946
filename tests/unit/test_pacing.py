"""Budget pacing: the plan curves, the controller step, the shared-state controller (memory here,
a real Redis in tests/system/test_state_redis.py), and the simulation bench's targets."""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime
from itertools import pairwise

import pytest

from bench.pacing_sim import SCENARIOS, simulate
from gateway.admission import pacing_controller as pacing
from gateway.admission.pacing_controller import PacingController, next_state, planned_fraction
from gateway.admission.periods import period_bounds
from gateway.state import MemoryState, PacingState, State
from policies.schema import PacingConfig

HOUR = 3600.0
DAY = 86400.0
MONDAY = datetime(2026, 11, 23, tzinfo=UTC).timestamp()  # a Monday, start of ISO week 48
NOV_1 = datetime(2026, 11, 1, tzinfo=UTC).timestamp()  # a Sunday; November has 30 days


def cfg(**kw: object) -> PacingConfig:
    return PacingConfig(**{"budget_usd": 100.0, **kw})  # type: ignore[arg-type]


# -- planned_fraction ----------------------------------------------------------------------------


def test_uniform_plan_is_linear_in_time() -> None:
    assert planned_fraction(cfg(period="day"), MONDAY) == 0.0
    assert planned_fraction(cfg(period="day"), MONDAY + 6 * HOUR) == pytest.approx(0.25)
    assert planned_fraction(cfg(period="day"), MONDAY + DAY - 1) == pytest.approx(1.0, abs=1e-4)
    assert planned_fraction(cfg(period="week"), MONDAY + 2.5 * DAY) == pytest.approx(2.5 / 7)
    assert planned_fraction(cfg(period="month"), NOV_1 + 15 * DAY) == pytest.approx(0.5)
    # The next window starts from zero again.
    assert planned_fraction(cfg(period="day"), MONDAY + DAY) == 0.0


def test_weekday_plan_weights_weekends_a_fifth() -> None:
    week = cfg(period="week", plan="weekday")
    total = 5 + 2 * 0.2
    assert planned_fraction(week, MONDAY + 4.5 * DAY) == pytest.approx(4.5 / total)  # Fri noon
    assert planned_fraction(week, MONDAY + 5 * DAY) == pytest.approx(5 / total)  # Sat 00:00
    assert planned_fraction(week, MONDAY + 5.5 * DAY) == pytest.approx(5.1 / total)  # Sat noon
    assert planned_fraction(week, MONDAY + 6.5 * DAY) == pytest.approx(5.3 / total)  # Sun noon
    # November 2026: 21 weekdays, 9 weekend days; the 1st is a Sunday.
    month = cfg(period="month", plan="weekday")
    total = 21 + 9 * 0.2
    assert planned_fraction(month, NOV_1 + 1 * DAY) == pytest.approx(0.2 / total)
    assert planned_fraction(month, NOV_1 + 1.5 * DAY) == pytest.approx(0.7 / total)
    # For a day the day's own weight does not matter: linear within it, Saturday too.
    day = cfg(period="day", plan="weekday")
    assert planned_fraction(day, MONDAY + 5 * DAY + 12 * HOUR) == pytest.approx(0.5)


def test_custom_plan_weights_equal_slices() -> None:
    day = cfg(period="day", plan=[1.0, 3.0])  # first half a quarter of the budget
    assert planned_fraction(day, MONDAY + 6 * HOUR) == pytest.approx(0.125)
    assert planned_fraction(day, MONDAY + 12 * HOUR) == pytest.approx(0.25)
    assert planned_fraction(day, MONDAY + 18 * HOUR) == pytest.approx(0.625)
    nights_off = cfg(period="day", plan=[0.0, 1.0, 1.0, 0.0])
    assert planned_fraction(nights_off, MONDAY + 5 * HOUR) == 0.0
    assert planned_fraction(nights_off, MONDAY + 12 * HOUR) == pytest.approx(0.5)
    assert planned_fraction(nights_off, MONDAY + 20 * HOUR) == pytest.approx(1.0)
    week = cfg(period="week", plan=[1.0] * 6 + [0.0])  # nothing on Sunday
    assert planned_fraction(week, MONDAY + 3 * DAY) == pytest.approx(0.5)


def test_plans_are_monotone_within_zero_and_one() -> None:
    for config in (
        cfg(period="week", plan="weekday"),
        cfg(period="month", plan=[3.0, 0.0, 1.0, 2.0, 0.5]),
        cfg(period="day", plan=[0.2] * 7 + [1.0] * 12 + [0.5] * 5),
    ):
        start, end = (t.timestamp() for t in period_bounds(config.period, NOV_1 + 10 * DAY))
        times = [start + (end - start) * i / 1000 for i in range(1000)] + [end - 1e-3]
        values = [planned_fraction(config, t) for t in times]
        assert values[0] == 0.0
        assert values[-1] == pytest.approx(1.0, abs=1e-6)
        assert all(a <= b + 1e-12 for a, b in pairwise(values))


# -- next_state: the controller step ------------------------------------------------------------


def steady(config: PacingConfig, now: float, multiplier: float = 1.0) -> PacingState:
    """A state stored 5 s before `now`, in `now`'s window, at `multiplier`."""
    first = next_state(config, PacingState(), planned_fraction(config, now - 5) * 100, now - 5)
    first.price_multiplier = multiplier
    first.integral = math.log(multiplier)
    return first


def test_ahead_of_plan_raises_lambda_and_behind_lowers_it() -> None:
    config = cfg(period="day")
    noon = MONDAY + 12 * HOUR
    prev = steady(config, noon)
    on_plan = next_state(config, prev, 50.0, noon)
    ahead = next_state(config, prev, 53.0, noon)
    behind = next_state(config, prev, 47.0, noon)
    assert on_plan.price_multiplier == pytest.approx(1.0, rel=1e-3)
    assert ahead.price_multiplier > 1.0 > behind.price_multiplier
    assert ahead.extra["error"] == pytest.approx(0.03)
    # Staying ahead keeps raising it; the integral remembers.
    state = ahead
    for i in range(1, 40):
        state = next_state(config, state, 53.0 + i * 0.001, noon + 5 * i)
    assert state.price_multiplier > ahead.price_multiplier
    assert state.integral > ahead.integral


def test_one_update_moves_lambda_by_a_bounded_factor() -> None:
    """A burst of spend within one interval nudges lambda; it does not slam it."""
    config = cfg(period="day")
    noon = MONDAY + 12 * HOUR
    prev = steady(config, noon)
    jumped = next_state(config, prev, 75.0, noon)  # 25% of the budget ahead at once
    assert jumped.price_multiplier == pytest.approx(math.exp(pacing.MAX_LOG_STEP))
    dropped = next_state(config, prev, 20.0, noon)
    assert dropped.price_multiplier == pytest.approx(math.exp(-pacing.MAX_LOG_STEP))


def test_integral_scales_with_elapsed_time_and_ignores_idle_gaps() -> None:
    config = cfg(period="day")
    noon = MONDAY + 12 * HOUR
    prev = steady(config, noon - 5)  # stored at noon - 10 s
    short = next_state(config, prev, 51.0, noon - 5)  # 5 s later
    longer = next_state(config, prev, 51.0, noon + 40)  # 50 s later
    d_short = short.integral - prev.integral
    d_long = longer.integral - prev.integral
    assert d_short > 0
    # The plan moved a little in 45 s too; scale by the error each step saw.
    ratio = (d_long / longer.extra["error"]) / (d_short / short.extra["error"])
    assert ratio == pytest.approx(10.0, rel=1e-6)
    # Hours without a request count as at most 1% of the period.
    idle = next_state(config, steady(config, MONDAY + 2 * HOUR), 50.5, noon)
    assert idle.integral == pytest.approx(pacing.KI * 0.005 * pacing.MAX_DT_FRACTION)


def test_lambda_is_clamped_and_the_integral_does_not_wind_up() -> None:
    config = cfg(period="day", min_multiplier=0.5, max_multiplier=4.0)
    t = MONDAY + 12 * HOUR
    state = steady(config, t)
    for _ in range(500):  # far behind for a long time
        t += 5
        state = next_state(config, state, 20.0, t)
    assert state.price_multiplier == pytest.approx(0.5)
    assert math.log(0.5) <= state.integral <= math.log(4.0)
    for _ in range(500):  # far ahead for a long time
        t += 5
        state = next_state(config, state, 80.0, t)
    assert state.price_multiplier == pytest.approx(4.0)
    assert math.log(0.5) <= state.integral <= math.log(4.0)
    # Back on plan: no wound-up integral holds lambda at the bound for long.
    for _ in range(20):
        t += 5
        state = next_state(config, state, planned_fraction(config, t) * 100, t)
    assert state.price_multiplier < 4.0


def test_near_exhaustion_lambda_goes_to_the_max() -> None:
    config = cfg(period="day")
    late = MONDAY + DAY - 60  # plan ~99.9%: 99.5% spent is behind plan
    prev = steady(config, late, multiplier=0.5)
    nearly = next_state(config, prev, 99.5, late)
    assert nearly.extra["error"] < 0
    floor = (0.995 - (1 - pacing.EXHAUSTION_MARGIN)) / pacing.EXHAUSTION_MARGIN
    assert nearly.price_multiplier == pytest.approx(100.0**floor)
    spent = next_state(config, prev, 100.0, late)  # no step limit on the way to the max
    assert spent.price_multiplier == pytest.approx(config.max_multiplier)
    # Far ahead of plan, the step limit holds lambda back; the exhaustion floor does not.
    early = steady(config, MONDAY + HOUR)
    assert next_state(config, early, 99.0, MONDAY + HOUR).price_multiplier == pytest.approx(10.0)
    assert next_state(config, early, 99.99, MONDAY + HOUR).price_multiplier > 95.0


def test_new_period_window_resets_the_controller() -> None:
    config = cfg(period="day")
    yesterday = next_state(config, PacingState(), 100.0, MONDAY - 60)
    assert yesterday.price_multiplier == pytest.approx(100.0)
    yesterday.integral = 2.0
    today = next_state(config, yesterday, 0.0, MONDAY + 10)
    assert today.extra[pacing.WINDOW_KEY] == MONDAY
    assert yesterday.extra[pacing.WINDOW_KEY] == MONDAY - DAY
    assert today.integral == pytest.approx(0.0, abs=1e-3)
    assert today.price_multiplier == pytest.approx(1.0, rel=0.05)


# -- PacingController against the shared state ---------------------------------------------------


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class GatedState:
    """Passes pacing calls through to a State; the first `together` reads return only once all
    of them are done, so that two controllers both read a stale state before either writes (a
    real CAS race, whatever the order the store answers in)."""

    def __init__(self, inner: State, together: int = 0) -> None:
        self.inner = inner
        self.writes = 0
        self._held = together
        self._gate = asyncio.Barrier(together) if together else None

    async def pacing_get(self, name: str) -> PacingState | None:
        got = await self.inner.pacing_get(name)
        if self._gate is not None and self._held > 0:
            self._held -= 1
            await self._gate.wait()
        await asyncio.sleep(0)
        return got

    async def pacing_update(self, name: str, expected_updated_at: float, new: PacingState) -> bool:
        self.writes += 1
        return await self.inner.pacing_update(name, expected_updated_at, new)


async def test_controller_stores_state_and_respects_the_update_interval(state: State) -> None:
    config = cfg(period="day", update_interval_s=5.0)
    clock = Clock(MONDAY + 12 * HOUR)
    ctl = PacingController(state, "key:k1", config, clock=clock)

    first = await ctl.multiplier(51.0)  # 1% ahead
    assert first == pytest.approx(math.exp(pacing.KP * 0.01))
    stored = await state.pacing_get("key:k1")
    assert stored is not None
    assert stored.updated_at == clock.now
    assert stored.price_multiplier == pytest.approx(first)
    assert stored.extra[pacing.WINDOW_KEY] == MONDAY
    assert (ctl.reads, ctl.updates) == (1, 1)

    for dt in (1.0, 2.5, 4.9):  # within the interval: the local cache answers
        clock.now = stored.updated_at + dt
        assert await ctl.multiplier(90.0) == first
    assert (ctl.reads, ctl.updates) == (1, 1)

    clock.now = stored.updated_at + 5.0
    second = await ctl.multiplier(52.0)
    assert second == pytest.approx(first * math.exp(pacing.MAX_LOG_STEP))
    assert (ctl.reads, ctl.updates) == (2, 2)
    again = await state.pacing_get("key:k1")
    assert again is not None and again.updated_at == clock.now


async def test_controllers_sharing_a_state_agree(state: State) -> None:
    config = cfg(period="day", update_interval_s=5.0)
    clock_a, clock_b = Clock(MONDAY + 8 * HOUR), Clock(MONDAY + 8 * HOUR + 1)
    a = PacingController(state, "route:chat", config, clock=clock_a)
    b = PacingController(state, "route:chat", config, clock=clock_b)

    lam_a = await a.multiplier(40.0)
    lam_b = await b.multiplier(10.0)  # a's fresh state wins over b's own view of the spend
    assert lam_b == lam_a
    assert (b.reads, b.updates) == (1, 0)

    clock_a.now += 5.0
    clock_b.now += 5.0
    assert await a.multiplier(40.0) == await b.multiplier(40.0)
    assert a.updates + b.updates == 2


async def test_cas_race_has_one_winner_and_the_loser_uses_its_value(state: State) -> None:
    config = cfg(period="day", update_interval_s=5.0)
    shared = GatedState(state, together=2)
    clock = Clock(MONDAY + 12 * HOUR)
    a = PacingController(shared, "key:k2", config, clock=clock)  # type: ignore[arg-type]
    b = PacingController(shared, "key:k2", config, clock=clock)  # type: ignore[arg-type]
    await state.pacing_update("key:k2", 0.0, PacingState(updated_at=clock.now - 60))

    lam_a, lam_b = await asyncio.gather(a.multiplier(55.0), b.multiplier(45.0))
    assert shared.writes == 2  # both tried
    assert a.updates + b.updates == 1  # one won
    assert lam_a == lam_b
    loser = b if a.updates else a
    assert loser.reads == 2  # read stale, lost, re-read the winner's
    stored = await state.pacing_get("key:k2")
    assert stored is not None and stored.price_multiplier == lam_a


async def test_concurrent_calls_in_one_process_read_once(state: State) -> None:
    config = cfg(period="day", update_interval_s=5.0)
    clock = Clock(MONDAY + 12 * HOUR)
    ctl = PacingController(GatedState(state), "key:k3", config, clock=clock)  # type: ignore[arg-type]
    values = await asyncio.gather(*(ctl.multiplier(50.0) for _ in range(20)))
    assert len(set(values)) == 1
    assert (ctl.reads, ctl.updates) == (1, 1)


async def test_controller_resets_at_the_period_rollover(state: State) -> None:
    config = cfg(period="day", update_interval_s=5.0)
    clock = Clock(MONDAY - 10.0)
    ctl = PacingController(state, "key:k4", config, clock=clock)
    assert await ctl.multiplier(99.5) > 10.0  # end of the day, budget nearly spent
    clock.now = MONDAY + 1.0  # within the interval, but a new day: don't keep the old max
    fresh = await ctl.multiplier(0.0)
    assert fresh == pytest.approx(1.0, rel=0.05)
    stored = await state.pacing_get("key:k4")
    assert stored is not None and stored.extra[pacing.WINDOW_KEY] == MONDAY


async def test_controller_with_memory_state_persists_between_instances() -> None:
    """A restarted process picks the stored multiplier up instead of starting neutral."""
    store = MemoryState()
    config = cfg(period="day")
    clock = Clock(MONDAY + 12 * HOUR)
    before = await PacingController(store, "k", config, clock=clock).multiplier(58.0)
    clock.now += 2.0
    after = await PacingController(store, "k", config, clock=clock).multiplier(0.0)
    assert after == before
    await store.aclose()


# -- the simulation bench ------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_simulation_meets_the_pacing_targets(scenario: str) -> None:
    result = simulate(scenario, seed=1)
    assert result.final_spend_pct <= 100.0 + 1e-9
    assert result.final_spend_pct >= 97.0
    assert result.max_gap_after_tenth_pct < 10.0
    assert result.refused == 0
    assert result.ok, result


def test_without_pacing_the_budget_runs_out_early() -> None:
    result = simulate("day-uniform", seed=1, paced=False)
    assert result.final_spend_pct <= 100.0 + 1e-9  # the hard budget still holds
    assert result.refused > 0
    assert result.max_gap_after_tenth_pct > 20.0
    assert not result.ok
