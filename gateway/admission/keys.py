"""Virtual API keys: created with a team, a budget and limits; the secret is shown once.

Only a SHA-256 of the secret is stored. The secrets are 256 random bits, so a fast hash is
enough: there is nothing to brute-force.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import asdict
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.state import State, VirtualKey

SECRET_PREFIX = "sk-rg-"
Period = Literal["day", "week", "month", "total"]
# Limits are stored as SQLite and Redis integers and shown by JavaScript: keep them exact there.
MAX_LIMIT = 2**53


class KeySpec(BaseModel):
    """What a caller may set when creating a key (CLI and admin API share it)."""

    model_config = ConfigDict(extra="forbid")

    team: str = Field(min_length=1, max_length=128)
    name: str | None = Field(default=None, max_length=128)
    budget_usd: float | None = Field(default=None, gt=0, le=1e15, allow_inf_nan=False)
    period: Period = "month"
    rpm: int | None = Field(default=None, gt=0, le=MAX_LIMIT)
    tpm: int | None = Field(default=None, gt=0, le=MAX_LIMIT)
    routes: list[str] | None = Field(default=None, min_length=1)
    pacing: Literal["uniform", "weekday"] | None = Field(
        default=None, description="spread the budget over its period with this plan"
    )

    @model_validator(mode="after")
    def _pacing_needs_a_budget(self) -> KeySpec:
        if self.pacing is not None and (self.budget_usd is None or self.period == "total"):
            raise ValueError("pacing needs a budget_usd and a period of day, week or month")
        return self


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


async def create_key(state: State, spec: KeySpec) -> tuple[VirtualKey, str]:
    """A new key and its secret. The secret is not stored and cannot be shown again."""
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    key = VirtualKey(
        id="key_" + secrets.token_hex(6),
        team=spec.team,
        name=spec.name,
        secret_hash=hash_secret(secret),
        secret_prefix=secret[: len(SECRET_PREFIX) + 4],
        budget_usd=spec.budget_usd,
        period=spec.period,
        rpm=spec.rpm,
        tpm=spec.tpm,
        routes=spec.routes,
        created_at=time.time(),
        pacing=(
            {"budget_usd": spec.budget_usd, "period": spec.period, "plan": spec.pacing}
            if spec.pacing
            else None
        ),
    )
    await state.put_key(key)
    return key, secret


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def public_view(key: VirtualKey) -> dict[str, Any]:
    """A key as the admin API and CLI show it: everything but the hash."""
    out = asdict(key)
    out.pop("secret_hash")
    out["active"] = key.active
    return out
