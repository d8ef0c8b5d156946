"""litellm, imported once and quietly, and its price map: what a remote call costs when the
policy sets no price for the model.

A leaf: the policy's price table (policies/pricing.py) and the remote backend both read it.
"""

from __future__ import annotations

import functools
import os
from typing import Any


@functools.cache
def load_litellm() -> Any:
    """Import and quiet litellm once (start() may do it off the event loop: the import lock
    makes a concurrent first call wait for it)."""
    # Without this, the import fetches the price map from GitHub (and waits out retries when
    # offline); the copy bundled with the installed version is enough.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    litellm.suppress_debug_info = True  # no "Give Feedback / Get Help" banners
    return litellm


def litellm_cost_usd(
    litellm_model: str, prompt_tokens: int, completion_tokens: int
) -> float | None:
    """USD for a call by litellm's price map, or None when the model is not in it."""
    litellm = load_litellm()
    try:
        prompt_usd, completion_usd = litellm.cost_per_token(
            model=litellm_model, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens
        )
    except Exception:  # litellm raises for models missing from its map
        return None
    return float(prompt_usd) + float(completion_usd)
