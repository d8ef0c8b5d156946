"""The price multiplier for one request: the pacing controllers of the paced route and key.

Both a route and a key may be paced; the stricter (larger) multiplier wins, so neither plan is
overrun. Spend is read from the same budget counters the hard budgets use, so pacing and the
hard cap can never disagree about what was spent.
"""

from __future__ import annotations

import time
from pathlib import Path

from gateway.admission.access import Budget, key_budget, route_budget
from gateway.admission.learned_plan import LearnedPlans
from gateway.admission.pacing_controller import PacingController
from gateway.state import State, VirtualKey
from policies.schema import PacingConfig, RouteConfig


class Pacers:
    def __init__(self, state: State, log_path: str | Path | None = None):
        self._state = state
        self._controllers: dict[str, PacingController] = {}
        # `plan: learned` reads the previous period's shape from the request log.
        self._plans = LearnedPlans(log_path)

    def budgets(
        self, key: VirtualKey | None, route: str | None, config: RouteConfig | None, now: float
    ) -> list[Budget]:
        """The hard budgets this request is charged to: the key's and the paced route's."""
        out = []
        if key is not None and (kb := key_budget(key, now)) is not None:
            out.append(kb)
        if route is not None and config is not None and config.pacing is not None:
            out.append(route_budget(route, config.pacing, now))
        return out

    async def multiplier(
        self, key: VirtualKey | None, route: str | None, config: RouteConfig | None
    ) -> float:
        """1.0 when nothing is paced."""
        now = time.time()
        factors = []
        if route is not None and config is not None and config.pacing is not None:
            budget = route_budget(route, config.pacing, now)
            pacing = await self.plan_for(config.pacing, "route", route, now)
            factors.append(await self._factor(f"route:{route}", pacing, budget))
        if key is not None and key.pacing is not None:
            pacing = await self.plan_for(
                PacingConfig.model_validate(key.pacing), "key", key.id, now
            )
            budget = key_budget(key, now)
            if budget is not None:
                factors.append(await self._factor(f"key:{key.id}", pacing, budget))
        return max(factors, default=1.0)

    async def plan_for(
        self, pacing: PacingConfig, kind: str, owner: str, now: float
    ) -> PacingConfig:
        """`pacing` with its plan as it stands this window: a learned plan as the custom curve
        it is (uniform without history); any other plan as it is. `kind`: "route" or "key"."""
        if pacing.plan != "learned":
            return pacing
        weights = await self._plans.weights(kind, owner, pacing.period, now)
        return pacing.model_copy(update={"plan": weights if weights is not None else "uniform"})

    async def _factor(self, name: str, pacing: PacingConfig, budget: Budget) -> float:
        controller = self._controllers.get(name)
        if controller is None or controller.config != pacing:
            controller = PacingController(self._state, name, pacing)
            self._controllers[name] = controller
        return await controller.multiplier(lambda: self._spent(budget))

    async def _spent(self, budget: Budget) -> float:
        spent, _reserved = await self._state.budget_usage(budget.name, time.time())
        return spent
