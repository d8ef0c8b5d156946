"""Who may send this request, and may they afford it: keys, route permissions, rate limits and
hard budgets (reserve the worst case before sending, settle to the actual cost after).

Runs between the policy and the router. Every refusal is an ApiError the client can act on.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cascades.base import Cascade
from gateway.admission.guard import (
    AccessRules,
    AuthThrottle,
    master_identity,
    master_key,
    secret_matches,
)
from gateway.admission.keys import bearer_token, hash_secret
from gateway.admission.periods import FOREVER, period_bounds, resets_at, window_id
from gateway.errors import ApiError
from gateway.state import Reservation, State, VirtualKey, from_micros, to_micros
from gateway.tokens import completion_cap, completion_limit
from policies.pricing import CostFn
from policies.schema import Defaults, PacingConfig

RATE_WINDOW_S = 60.0


def typical_from_upper(upper: int) -> int:
    """About four characters a token: what rate limits and routers count before the real
    usage is known."""
    return max(1, upper // 4)


@dataclass(frozen=True, slots=True)
class Budget:
    """One hard budget a request is charged to: a key's, or a paced route's."""

    name: str  # state name of the current window, e.g. "key:key_3f9a:2026-11"
    limit_usd: float
    period: str
    owner: str  # for messages: "API key key_3f9a (team ads)", "route 'auto'"


def key_budget(key: VirtualKey, now: float) -> Budget | None:
    if key.budget_usd is None:
        return None
    return Budget(
        f"key:{key.id}:{window_id(key.period, now)}",
        key.budget_usd,
        key.period,
        f"API key {key.id} (team {key.team})",
    )


def route_budget(route: str, pacing: PacingConfig, now: float) -> Budget:
    """A paced route's budget is also a hard cap: pacing steers, the cap guarantees."""
    return Budget(
        f"route:{route}:{window_id(pacing.period, now)}",
        pacing.budget_usd,
        pacing.period,
        f"route '{route}'",
    )


@dataclass
class Admission:
    """What a request was allowed, and what must be settled when it ends."""

    state: State | None = None
    key: VirtualKey | None = None
    reservation_id: str | None = None
    budgets: list[Budget] = field(default_factory=list)  # reserved, to settle
    reserved_usd: float = 0.0
    typical_prompt_tokens: int = 0
    settled: bool = False
    models: list[str] | None = None  # the chain the reservation covers, when budgets apply

    async def settle(self, cost_usd: float, tokens: int) -> None:
        """Charge the actual cost (0 when no model answered) and release the rest. Once."""
        if self.settled or self.state is None:
            return
        self.settled = True
        now = time.time()
        for budget in self.budgets:
            assert self.reservation_id is not None
            await self.state.settle(budget.name, self.reservation_id, cost_usd)
        if self.key is not None and self.key.tpm:
            # The typical prompt estimate was counted up front; correct it to the real usage.
            await self.state.window_add(
                f"tpm:{self.key.id}", tokens - self.typical_prompt_tokens, RATE_WINDOW_S, now
            )


@dataclass(slots=True)
class AdmissionRequest:
    """What `Access.admit` needs to know about one request, once it is routed."""

    key: VirtualKey | None
    budgets: list[Budget]  # the hard budgets it is charged to
    body: dict[str, Any]
    prompt_upper: int  # an upper bound on the prompt's tokens
    models: list[str]  # the chain the router chose, in order
    request_id: str
    prices: Mapping[str, CostFn]
    defaults: Defaults
    cascade: Cascade | None = None  # the route's cascade, when it has one
    # False: the call writes no tokens (embeddings), so no answer length is assumed or set.
    generates: bool = True


class Access:
    def __init__(self, state: State):
        self.state = state
        self.throttle = AuthThrottle(state)

    async def authenticate(
        self, authorization: str | None, rules: AccessRules, client: str
    ) -> VirtualKey | None:
        """The caller's key; the master key's identity for the master key; None for an
        anonymous caller of an open gateway (`access.auth: open`, an explicit setting).

        A virtual key is looked up first: its secret is 256 random bits, so it passes without
        the throttle (a valid key is never locked out). Any other token is a guess at the
        master key or a key: throttled per client address before it is compared."""
        token = bearer_token(authorization)
        if token is None:
            if rules.auth == "open":
                return None
            raise ApiError(
                401,
                "Missing API key: send 'Authorization: Bearer <key>' (or 'x-api-key: <key>')",
                code="missing_api_key",
            )
        key = await self.state.key_by_hash(hash_secret(token))
        if key is not None:
            if not key.active:
                raise ApiError(401, f"API key {key.id} has been revoked", code="key_revoked")
            return key
        master = master_key()
        if rules.auth == "open":
            # Anyone may call: an unknown token is anonymous, and nothing is being guessed.
            return master_identity() if master and secret_matches(token, master) else None
        if await self.throttle.verify(client, rules.failures, token, [master] if master else []):
            return master_identity()
        raise ApiError(401, "Invalid API key", code="invalid_api_key")

    def check_route(self, key: VirtualKey | None, asked: str) -> None:
        if key is not None and key.routes is not None and asked not in key.routes:
            raise ApiError(
                403,
                f"API key {key.id} may not use '{asked}'; allowed: {', '.join(key.routes)}",
                code="model_not_allowed",
                param="model",
            )

    async def admit(self, ask: AdmissionRequest) -> Admission:
        """Check the key's rate limits and reserve the worst case on every budget.

        `ask.body` may gain `max_tokens` (the policy default) when a budget applies and the
        client set none: a worst case needs an upper bound on the answer. A cascade may call
        several models for one request: its own worst case is reserved, and it is never trimmed.
        """
        now = time.time()
        typical = typical_from_upper(ask.prompt_upper)
        admission = Admission(self.state, ask.key, typical_prompt_tokens=typical)
        if ask.key is not None:
            await self._rate_limits(ask.key, admission, now)
        if ask.budgets:
            await self._reserve(ask, admission, now)
        return admission

    async def _rate_limits(self, key: VirtualKey, admission: Admission, now: float) -> None:
        if key.rpm:
            hit = await self.state.window_hit(f"rpm:{key.id}", 1, key.rpm, RATE_WINDOW_S, now)
            if not hit.ok:
                raise _rate_limited(f"{key.rpm} requests per minute", key, hit.retry_after_s)
        if key.tpm:
            hit = await self.state.window_hit(
                f"tpm:{key.id}", admission.typical_prompt_tokens, key.tpm, RATE_WINDOW_S, now
            )
            if not hit.ok:
                raise _rate_limited(f"{key.tpm} tokens per minute", key, hit.retry_after_s)

    async def _reserve(self, ask: AdmissionRequest, admission: Admission, now: float) -> None:
        body, defaults, prompt = ask.body, ask.defaults, ask.prompt_upper
        if ask.generates and completion_limit(body) is None:
            body["max_tokens"] = defaults.max_tokens
        # The largest limit the upstream may honour, times the answers it may generate.
        completion = (completion_cap(body) or defaults.max_tokens) if ask.generates else 0
        admission.reservation_id = ask.request_id
        if ask.cascade is not None:
            worst = ask.cascade.worst_case_usd(prompt, completion, ask.prices)
            refused = await self._reserve_all(ask, worst, now, admission)
            if refused is not None:
                raise _budget_exhausted(refused[0], refused[1], worst, now)
            admission.models = list(ask.models)
            admission.reserved_usd = from_micros(to_micros(worst))
            return
        worst_of = {m: ask.prices[m](prompt, completion, None) for m in ask.models}
        chain = list(ask.models)
        while True:
            # The chain may fall back to a dearer model: reserve for the dearest in it.
            worst = max(worst_of[m] for m in chain)
            refused = await self._reserve_all(ask, worst, now, admission)
            if refused is None:
                admission.models = chain
                admission.reserved_usd = from_micros(to_micros(worst))
                return
            budget, res = refused
            # Near the end of a budget, models whose worst case no longer fits are skipped:
            # the cheaper rest of the chain may still answer within it.
            room = budget.limit_usd - res.spent_usd - res.reserved_usd
            fitting = [m for m in chain if worst_of[m] <= room]
            if not fitting or len(fitting) == len(chain):
                raise _budget_exhausted(budget, res, worst, now)
            chain = fitting

    async def _reserve_all(
        self, ask: AdmissionRequest, worst: float, now: float, admission: Admission
    ) -> tuple[Budget, Reservation] | None:
        """Reserve `worst` on every budget, or on none: the one that refused, and why."""
        ttl, request_id = ask.defaults.reservation_ttl_s, ask.request_id
        for budget in ask.budgets:
            res = await self.state.reserve(
                budget.name, request_id, worst, budget.limit_usd, ttl, now
            )
            if not res.ok:
                # Budgets already reserved give their share back: nothing was sent.
                for taken in admission.budgets:
                    await self.state.release(taken.name, request_id)
                admission.budgets.clear()
                return budget, res
            admission.budgets.append(budget)
        return None


def _budget_exhausted(budget: Budget, res: Reservation, worst: float, now: float) -> ApiError:
    period = "in total" if budget.period == "total" else f"this {budget.period}"
    held = f", ${res.reserved_usd:.4f} held by requests in flight" if res.reserved_usd else ""
    # A calendar budget is free again when its period ends; a `total` one never is. Refused
    # only for what requests in flight hold, it may fit as soon as they settle: no fixed time.
    _, end = period_bounds(budget.period, now)
    wait = None
    if end != FOREVER and res.spent_usd + worst > budget.limit_usd:
        wait = max(1, math.ceil(end.timestamp() - now))
    return ApiError(
        429,
        f"Budget exhausted for {budget.owner}: "
        f"${res.spent_usd:.4f} of ${budget.limit_usd:.2f} spent {period}{held}; "
        f"this request may cost up to ${worst:.4f}. "
        f"The budget resets {resets_at(budget.period, now)}.",
        code="budget_exceeded",
        headers={"retry-after": str(wait)} if wait is not None else None,
    )


def _rate_limited(what: str, key: VirtualKey, retry_after_s: float) -> ApiError:
    wait = max(1, math.ceil(retry_after_s))
    return ApiError(
        429,
        f"Rate limit of {what} reached for API key {key.id}; retry after {wait} s",
        code="rate_limit_exceeded",
        headers={"retry-after": str(wait)},
    )
