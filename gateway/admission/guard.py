"""Who may call what: the policy's `access:` rules resolved against the environment, the
master key and metrics token, and the throttle on failed authentication.

The rules are explicit settings, never inferred from the state store: a gateway started on an
emptied Redis must not open up. A failed authentication (a wrong master key, metrics token or
API key) counts against the caller's address in the state store's sliding window, shared by
replicas; past the limit the address gets 429 before any secret is compared, so guessing is
slow while a client at another address, or one holding a valid API key, is not locked out.
"""

from __future__ import annotations

import hmac
import math
import os
import time
from dataclasses import dataclass
from typing import Literal

from starlette.requests import Request

from gateway.admission.keys import bearer_token
from gateway.errors import ApiError
from gateway.state import State, StateUnavailable, VirtualKey
from policies.schema import AccessConfig, AuthFailuresConfig

MASTER_KEY_ENV = "ROUTEGATE_MASTER_KEY"
METRICS_TOKEN_ENV = "ROUTEGATE_METRICS_TOKEN"
MASTER_KEY_ID = "master"  # what the request log shows for a request sent with the master key
STATE_RETRY_AFTER_S = 5  # what a client is told to wait when the state store is down

Auth = Literal["keys", "open"]


def master_key() -> str | None:
    return os.environ.get(MASTER_KEY_ENV) or None


def metrics_token() -> str | None:
    return os.environ.get(METRICS_TOKEN_ENV) or None


def secret_matches(candidate: str, secret: str) -> bool:
    return hmac.compare_digest(candidate.encode(), secret.encode())


@dataclass(frozen=True, slots=True)
class AccessRules:
    """`AccessConfig` with its defaults worked out: keys whenever a master key is set, and the
    read endpoints guarded whenever keys are required."""

    auth: Auth
    metrics_guarded: bool
    models_guarded: bool
    readyz_guarded: bool
    failures: AuthFailuresConfig


def access_rules(config: AccessConfig, master: str | None) -> AccessRules:
    auth: Auth = config.auth or ("keys" if master else "open")

    def guarded(setting: str | None) -> bool:
        return (setting or ("guarded" if auth == "keys" else "open")) == "guarded"

    return AccessRules(
        auth,
        guarded(config.metrics),
        guarded(config.models),
        guarded(config.readyz),
        config.auth_failures,
    )


def rules_of(request: Request) -> AccessRules:
    """The rules of the policy serving now (a reload may change them)."""
    runtime = request.app.state.holder.current
    if runtime is not None:
        return runtime.access
    return access_rules(AccessConfig(), master_key())


def throttle_of(request: Request) -> AuthThrottle:
    throttle: AuthThrottle = request.app.state.services.access.throttle
    return throttle


def master_identity() -> VirtualKey:
    """The master key sent on /v1: no key limits (route budgets still apply)."""
    return VirtualKey(id=MASTER_KEY_ID, team=MASTER_KEY_ID, secret_hash="", secret_prefix="")


def client_address(request: Request) -> str:
    """The peer address; a proxy's X-Forwarded-For only counts behind `--forwarded-allow-ips`."""
    return request.client.host if request.client else "unknown"


def state_unavailable(exc: StateUnavailable) -> ApiError:
    return ApiError(
        503,
        "The gateway's state store is unreachable; retry shortly",
        code="state_unavailable",
        headers={"retry-after": str(STATE_RETRY_AFTER_S)},
    )


def _too_many(retry_after_s: float) -> ApiError:
    wait = max(1, math.ceil(retry_after_s))
    return ApiError(
        429,
        f"Too many failed authentications from this address; retry after {wait} s",
        code="too_many_auth_failures",
        headers={"retry-after": str(wait)},
    )


class AuthThrottle:
    """Failed authentications per client address, in the state store's sliding window."""

    def __init__(self, state: State):
        self._state = state

    @staticmethod
    def _name(client: str) -> str:
        return f"authfail:{client}"

    async def check(self, client: str, limit: AuthFailuresConfig) -> None:
        """429 when one more failure would not fit: asked before any secret is compared."""
        # Adding 0 against limit - 1 asks "would one more failure fit?" without counting one.
        hit = await self._state.window_hit(
            self._name(client), 0, limit.limit - 1, limit.window_s, time.time()
        )
        if not hit.ok:
            raise _too_many(hit.retry_after_s)

    async def failed(self, client: str, limit: AuthFailuresConfig) -> None:
        """Count one failure; 429 when it is over the limit."""
        hit = await self._state.window_hit(
            self._name(client), 1, limit.limit, limit.window_s, time.time()
        )
        if not hit.ok:
            raise _too_many(hit.retry_after_s)

    async def verify(
        self, client: str, limit: AuthFailuresConfig, candidate: str, secrets: list[str]
    ) -> bool:
        """Whether `candidate` is one of `secrets`, throttled: 429 when the address is over
        its limit (before comparing), a counted failure when it matches none."""
        await self.check(client, limit)
        if any(secret_matches(candidate, s) for s in secrets):
            return True
        await self.failed(client, limit)
        return False


def authorization(request: Request) -> str | None:
    """`authorization: Bearer <key>`, or Anthropic's `x-api-key: <key>` (its SDK sends that)."""
    headers = request.headers
    value = headers.get("authorization")
    if value is None and (key := headers.get("x-api-key")):
        return f"Bearer {key}"
    return value


def request_bearer(request: Request) -> str | None:
    return bearer_token(request.headers.get("authorization"))


async def bearer_is(request: Request, secrets: list[str | None]) -> bool:
    """The request's bearer is one of `secrets` (throttled: a wrong one counts as a failure,
    429 past the limit). False, and nothing counted, when it sends none."""
    token = request_bearer(request)
    if token is None:
        return False
    known = [s for s in secrets if s]
    rules = rules_of(request)
    return await throttle_of(request).verify(client_address(request), rules.failures, token, known)
