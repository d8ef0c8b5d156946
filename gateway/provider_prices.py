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
    litellm_model: str, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0
) -> float | None:
    """USD for a call by litellm's price map, or None when the model is not in it.

    `cached_tokens` (of the prompt's) are priced at the map's cache-read price where it has
    one; litellm prices them at the input price otherwise."""
    litellm = load_litellm()
    try:
        prompt_usd, completion_usd = litellm.cost_per_token(
            model=litellm_model,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cache_read_input_tokens=cached_tokens,
        )
    except Exception:  # litellm raises for models missing from its map
        return None
    return float(prompt_usd) + float(completion_usd)


def litellm_cache_read_per_1m(litellm_model: str) -> float | None:
    """litellm's price map's cache-read price for the model, USD per million prompt tokens;
    None when the map has no such price (or no such model)."""
    litellm = load_litellm()
    try:
        info = litellm.get_model_info(litellm_model)
    except Exception:  # not in the map
        return None
    per_token = info.get("cache_read_input_token_cost")
    return None if per_token is None else float(per_token) * 1e6
