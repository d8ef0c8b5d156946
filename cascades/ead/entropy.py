"""The switching measure: each token's entropy, and its rolling mean over a window."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping


def token_entropy(top: Mapping[str, float] | None) -> float:
    """Entropy (nats) of one position's top-k distribution, renormalised over the k returned.

    vLLM may return k+1 entries (the sampled token when outside the top k); all are used."""
    if not top:
        return 0.0
    peak = max(top.values())
    weights = [math.exp(lp - peak) for lp in top.values()]
    total = sum(weights)
    return -sum(w / total * math.log(w / total) for w in weights if w > 0)


class RollingMean:
    """Mean of the last `size` values; over what there is while fewer have arrived."""

    def __init__(self, size: int):
        self._values: deque[float] = deque(maxlen=size)

    def push(self, value: float) -> float:
        self._values.append(value)
        return sum(self._values) / len(self._values)

    def mean(self) -> float:
        return sum(self._values) / len(self._values) if self._values else 0.0

    def clear(self) -> None:
        self._values.clear()
