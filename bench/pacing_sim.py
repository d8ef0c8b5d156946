"""Does budget pacing keep spend on plan? A simulated period of synthetic traffic, routed between
a cheap and a strong model by `quality - lambda_base * multiplier * cost`, with the real
`PacingController` (on a `MemoryState`, with a simulated clock) setting the multiplier.

    python -m bench.pacing_sim                    # 5 seeds, every scenario, paced and not
    python -m bench.pacing_sim --seeds 3 --json var/pacing.json --per-seed

Traffic follows a diurnal shape plus a burst (several times the usual rate for an hour or two);
its volume is set so that always choosing the strong model would cost about 3x the budget and
always choosing the cheap one about 0.3x, so the multiplier must really steer. Each request
carries its own quality gain of the strong model over the cheap one (exponentially distributed),
so the share of strong choices falls steadily as the multiplier rises. Requests take 1-30 s, and
the controller sees only settled spend, as in the gateway. The hard budget is modelled too: a
request whose worst-case cost would cross what is left (after open reservations) goes to the cheap
model, or is refused when even that would not fit, so spend never exceeds the budget.

Targets (from the pacing issue): final spend within 3% of the budget and never above it; spend
within 10% of the budget of the plan at every moment after the first tenth of the period. "No
pacing" (multiplier fixed at 1) is run beside each scenario to show what the controller buys.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import heapq
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from rich.console import Console
from rich.table import Table

from gateway.admission.pacing_controller import PacingController, planned_fraction
from gateway.state import MemoryState
from policies.schema import PacingConfig

BUDGET_USD = 100.0
STRONG_COST_RATIO = 3.0  # always-strong spend / budget
CHEAP_COST_RATIO = 0.3  # always-cheap spend / budget
STRONG_SHARE_AT_NEUTRAL = 0.5  # lambda_base is set so that half the requests pick strong at 1.0
SIZE_SIGMA = 0.5  # lognormal spread of a request's worst-case size
ACTUAL_MIN, ACTUAL_MAX = 0.25, 1.0  # actual cost = worst case x U(ACTUAL_MIN, ACTUAL_MAX)
MEAN_ACTUAL = (ACTUAL_MIN + ACTUAL_MAX) / 2
LATENCY_MIN_S, LATENCY_MAX_S = 1.0, 30.0  # spend settles when a request finishes
MEAN_SIZE = math.exp(SIZE_SIGMA**2 / 2)
START = 1795392000.0  # 2026-11-23 00:00 UTC, a Monday: the start of a day and of an ISO week
DAY_S = 86400.0

FINAL_TOLERANCE = 0.03  # final spend at least 97% of the budget (and never above it)
GAP_TARGET = 0.10  # |spend - plan| below 10% of the budget after the first tenth of the period


def diurnal(hour_of_day: float) -> float:
    """Relative request rate over a day: lowest around 02:00, highest around 14:00 (0.4..1.6)."""
    return 1.0 + 0.6 * math.cos(2 * math.pi * (hour_of_day - 14.0) / 24.0)


@dataclass(frozen=True)
class Scenario:
    name: str
    period: Literal["day", "week"]
    plan: Literal["uniform", "weekday"] | tuple[float, ...]
    requests: int  # expected requests over the period
    burst: tuple[float, float, float]  # (start hour, end hour) from the period start, factor
    weekend_factor: float = 1.0  # traffic on Saturday and Sunday relative to weekdays
    description: str = ""

    @property
    def length_s(self) -> float:
        return DAY_S if self.period == "day" else 7 * DAY_S

    def config(self) -> PacingConfig:
        plan = list(self.plan) if isinstance(self.plan, tuple) else self.plan
        return PacingConfig(budget_usd=BUDGET_USD, period=self.period, plan=plan)

    def rate(self, t: float) -> float:
        """Relative request rate `t` seconds into the period."""
        hours = t / 3600.0
        r = diurnal(hours % 24.0)
        if self.period == "week" and hours // 24 >= 5:
            r *= self.weekend_factor
        b0, b1, factor = self.burst
        if b0 <= hours < b1:
            r *= factor
        return r


# A custom intraday plan: hourly weights that follow business hours, roughly (not exactly) the
# traffic's shape, as an operator would write it.
BUSINESS_HOURS = (0.4,) * 7 + (0.8, 1.2) + (1.6,) * 4 + (1.4,) * 5 + (1.0, 0.8, 0.6) + (0.5,) * 3

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "day-uniform",
            "day",
            "uniform",
            requests=20_000,
            burst=(10.0, 11.5, 4.0),
            description="one day, uniform plan, 4x burst 10:00-11:30",
        ),
        Scenario(
            "day-curve",
            "day",
            BUSINESS_HOURS,
            requests=20_000,
            burst=(15.0, 17.0, 3.0),
            description="one day, custom hourly plan, 3x burst 15:00-17:00",
        ),
        Scenario(
            "week-weekday",
            "week",
            "weekday",
            requests=56_000,
            burst=(2 * 24 + 13.0, 2 * 24 + 14.0, 5.0),
            weekend_factor=0.3,
            description="one week, weekday plan, quiet weekend, 5x burst Wed 13:00-14:00",
        ),
    )
}


@dataclass
class SimResult:
    scenario: str
    seed: int
    paced: bool
    requests: int
    final_spend_pct: float  # of the budget
    max_gap_pct: float  # max |spend - plan| over the whole period, % of the budget
    max_gap_after_tenth_pct: float  # the same after the first tenth of the period
    strong_share: float  # of requests served
    forced_cheap: int  # strong wanted but the hard budget left room only for cheap
    refused: int  # not even the cheap model fitted
    lambda_updates: int
    multiplier_min: float
    multiplier_max: float
    targets: dict[str, bool] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(self.targets.values())


def _arrivals(scenario: Scenario, rng: random.Random) -> list[float]:
    """Arrival times (seconds into the period) of a Poisson process with the scenario's rate:
    exponential gaps in cumulative-intensity space, mapped back through a per-minute table."""
    step = 60.0
    n = int(scenario.length_s / step)
    cum = [0.0]
    for i in range(n):
        cum.append(cum[-1] + scenario.rate((i + 0.5) * step))
    scale = scenario.requests / cum[-1]
    cum = [c * scale for c in cum]
    times: list[float] = []
    x = rng.expovariate(1.0)
    while x < cum[-1]:
        i = bisect.bisect_right(cum, x) - 1
        times.append((i + (x - cum[i]) / (cum[i + 1] - cum[i])) * step)
        x += rng.expovariate(1.0)
    return times


async def _run(scenario: Scenario, seed: int, paced: bool) -> SimResult:
    rng = random.Random(seed)
    config = scenario.config()
    budget = config.budget_usd
    # Unit prices per unit of size, so that the expected totals hit the target cost ratios.
    per_request = budget / (scenario.requests * MEAN_SIZE * MEAN_ACTUAL)
    strong_price = STRONG_COST_RATIO * per_request
    cheap_price = CHEAP_COST_RATIO * per_request
    # lambda_base: at multiplier 1 an average request prefers strong half the time
    # (quality gains are Exp(1), so P(gain > x) = exp(-x)).
    mean_delta = (strong_price - cheap_price) * MEAN_SIZE * MEAN_ACTUAL
    lambda_base = -math.log(STRONG_SHARE_AT_NEUTRAL) / mean_delta

    clock_now = [START]
    controller = PacingController(MemoryState(), "sim", config, clock=lambda: clock_now[0])

    settled = 0.0  # what the controller sees: spend of finished requests
    reserved = 0.0  # worst-case cost of requests in flight, held against the hard budget
    in_flight: list[tuple[float, float, float]] = []  # (finish time, actual, worst case)
    strong = served = forced = refused = 0
    m_min, m_max = math.inf, -math.inf
    max_gap = max_gap_late = 0.0
    tenth = START + scenario.length_s / 10
    last = START + scenario.length_s - 1e-3  # still inside the window

    def note_gap(t: float, before: float, after: float) -> None:
        """Settled spend is flat between settlements and the plan is linear (or piecewise
        linear with far fewer knots), so the gap peaks at settlements: check both sides."""
        nonlocal max_gap, max_gap_late
        p = planned_fraction(config, min(t, last))
        gap = max(abs(before / budget - p), abs(after / budget - p))
        max_gap = max(max_gap, gap)
        if t >= tenth:
            max_gap_late = max(max_gap_late, gap)

    def settle_until(t: float) -> None:
        nonlocal settled, reserved
        while in_flight and in_flight[0][0] <= t:
            done, actual, worst = heapq.heappop(in_flight)
            note_gap(done, settled, settled + actual)
            settled += actual
            reserved -= worst

    for offset in _arrivals(scenario, rng):
        now = START + offset
        settle_until(now)
        clock_now[0] = now
        multiplier = await controller.multiplier(settled) if paced else 1.0
        m_min, m_max = min(m_min, multiplier), max(m_max, multiplier)
        gain = rng.expovariate(1.0)
        size = rng.lognormvariate(0.0, SIZE_SIGMA)  # worst case (max_tokens), price units
        used = rng.uniform(ACTUAL_MIN, ACTUAL_MAX)  # the part of the worst case really used
        latency = rng.uniform(LATENCY_MIN_S, LATENCY_MAX_S)
        expected = size * MEAN_ACTUAL  # what a router knows: the expected size
        lam = lambda_base * multiplier
        want_strong = gain - lam * strong_price * expected > -lam * cheap_price * expected
        left = budget - settled - reserved
        if want_strong and strong_price * size <= left:
            price = strong_price
            strong += 1
        elif cheap_price * size <= left:
            price = cheap_price
            forced += want_strong
        else:
            refused += 1
            continue
        served += 1
        reserved += price * size
        heapq.heappush(in_flight, (now + latency, price * size * used, price * size))
    settle_until(math.inf)
    note_gap(last, settled, settled)

    final = settled / budget
    result = SimResult(
        scenario=scenario.name,
        seed=seed,
        paced=paced,
        requests=served + refused,
        final_spend_pct=100 * final,
        max_gap_pct=100 * max_gap,
        max_gap_after_tenth_pct=100 * max_gap_late,
        strong_share=strong / served if served else 0.0,
        forced_cheap=forced,
        refused=refused,
        lambda_updates=controller.updates,
        multiplier_min=m_min,
        multiplier_max=m_max,
    )
    result.targets = {
        "final within 3%": 1 - FINAL_TOLERANCE <= final <= 1.0 + 1e-12,
        "gap < 10% after first tenth": max_gap_late < GAP_TARGET,
    }
    return result


def simulate(scenario: str | Scenario, seed: int = 0, paced: bool = True) -> SimResult:
    """Simulate one period of `scenario` (a name in SCENARIOS, or a Scenario)."""
    sc = SCENARIOS[scenario] if isinstance(scenario, str) else scenario
    return asyncio.run(_run(sc, seed, paced))


def _table(results: list[SimResult], per_seed: bool) -> Table:
    table = Table(
        title=f"Budget pacing, ${BUDGET_USD:.0f} budget: final spend range, worst gaps, means",
        caption="gap: |spend - plan| as % of budget; forced: strong wanted, cheap served "
        "(hard budget); lambda: multiplier range",
    )
    for col in (
        "scenario",
        "pacing",
        "seeds",
        "final %",
        "max gap %",
        "gap>1/10 %",
        "strong",
        "forced",
        "refused",
        "updates",
        "lambda",
        "targets",
    ):
        table.add_column(col, justify="left" if col in ("scenario", "pacing") else "right")
    groups: dict[tuple[str, bool], list[SimResult]] = {}
    for r in results:
        groups.setdefault((r.scenario, r.paced), []).append(r)
    for (name, paced), rs in groups.items():
        rows = [(f"seed {r.seed}", [r]) for r in rs] if per_seed else [(str(len(rs)), rs)]
        for label, group in rows:
            finals = [r.final_spend_pct for r in group]
            final = (
                f"{finals[0]:.1f}" if len(group) == 1 else f"{min(finals):.1f}-{max(finals):.1f}"
            )
            met = sum(r.ok for r in group)
            table.add_row(
                name,
                "controller" if paced else "none (x1)",
                label,
                final,
                f"{max(r.max_gap_pct for r in group):.1f}",
                f"{max(r.max_gap_after_tenth_pct for r in group):.1f}",
                f"{sum(r.strong_share for r in group) / len(group):.2f}",
                f"{sum(r.forced_cheap for r in group) / len(group):.0f}",
                f"{sum(r.refused for r in group) / len(group):.0f}",
                f"{sum(r.lambda_updates for r in group) / len(group):.0f}",
                f"{min(r.multiplier_min for r in group):.2f}-"
                f"{max(r.multiplier_max for r in group):.1f}",
                f"[{'green' if met == len(group) else 'red'}]{met}/{len(group)}[/]",
            )
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds per scenario (0, 1, ...)")
    parser.add_argument("--seed", type=int, default=0, help="first seed")
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), action="append")
    parser.add_argument("--per-seed", action="store_true", help="one row per seed")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write every result here")
    args = parser.parse_args(argv)

    console = Console(width=max(Console().width, 140))  # the table needs ~130 columns
    began = time.perf_counter()
    results: list[SimResult] = []
    for name in args.scenario or list(SCENARIOS):
        for paced in (True, False):
            for seed in range(args.seed, args.seed + args.seeds):
                results.append(simulate(name, seed, paced))
    elapsed = time.perf_counter() - began

    for name in args.scenario or list(SCENARIOS):
        console.print(f"[bold]{name}[/]: {SCENARIOS[name].description}")
    console.print(_table(results, args.per_seed))
    paced_ok = all(r.ok for r in results if r.paced)
    console.print(
        f"targets (final spend within {FINAL_TOLERANCE:.0%} of budget and never above; gap to "
        f"plan < {GAP_TARGET:.0%} of budget after the first tenth): "
        + ("[green]met by the controller on every seed[/]" if paced_ok else "[red]NOT met[/]")
        + f"  ({elapsed:.1f} s)"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "targets_met": paced_ok,
            "results": [asdict(r) | {"ok": r.ok} for r in results],
        }
        args.json.write_text(json.dumps(payload, indent=2))
    return 0 if paced_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
