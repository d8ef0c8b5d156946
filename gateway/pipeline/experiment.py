"""Experiments: which arm of an experiment route serves a request.

The arm is a pure function of the experiment's salt, its weights and who is asking, so every
replica gives the same caller the same arm, with no state, for as long as the weights stay.
"""

from __future__ import annotations

import hashlib
from typing import Any

from policies.schema import ExperimentRoute

_SPAN = float(1 << 64)


def sticky_id(
    config: ExperimentRoute, key_id: str | None, body: dict[str, Any], request_id: str
) -> str:
    """Who keeps their arm: the key (or the request's `user`, falling back to the key); with
    neither, the request itself, so an anonymous caller is assigned afresh each time."""
    if config.sticky == "user":
        user = body.get("user")
        if isinstance(user, str) and user:
            return "user:" + user
    return "key:" + key_id if key_id is not None else "request:" + request_id


def unit(salt: str, who: str) -> float:
    """A uniform draw in [0, 1) that depends only on (salt, who)."""
    digest = hashlib.blake2b(f"{salt}\0{who}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SPAN


def choose_arm(name: str, config: ExperimentRoute, who: str) -> str:
    """The arm whose share of the weights' cumulative sum holds this caller's draw."""
    arms = config.arms
    point = unit(config.salt or name, who) * sum(arms.values())
    chosen = ""
    for arm, weight in arms.items():
        chosen = arm
        point -= weight
        if point < 0:
            break
    return chosen  # rounding at the top end: the last arm
