"""How sure a model was of its answer, from the logprobs it returned.

Both OpenAI logprob shapes are read: chat (`logprobs.content[i].logprob` and `.top_logprobs`)
and completions (`logprobs.token_logprobs[i]` and `logprobs.top_logprobs[i]` as a dict).
A score is "higher is surer" for every method except `mean_entropy`, where lower is surer;
`should_escalate` knows which.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from gateway.backends.base import Kind
from policies.schema import ConfidenceConfig


@dataclass(slots=True)
class TokenLogprobs:
    """One answer's tokens: each token's logprob and its top-k alternatives' logprobs."""

    logprobs: list[float] = field(default_factory=list)
    top: list[list[float]] = field(default_factory=list)

    def extend(self, other: TokenLogprobs) -> None:
        self.logprobs.extend(other.logprobs)
        self.top.extend(other.top)

    def __len__(self) -> int:
        return len(self.logprobs)


def logprob_request(kind: Kind, top_k: int) -> dict[str, Any]:
    """The body fields that make an upstream return logprobs."""
    if kind == "chat":
        return {"logprobs": True, "top_logprobs": top_k}
    return {"logprobs": top_k}


def _finite(x: Any) -> float:
    # vLLM reports -inf (as -9999.0 or null) for tokens outside the sampled distribution.
    if x is None:
        return -9999.0
    return max(float(x), -9999.0)


def read_logprobs(kind: Kind, choice: dict[str, Any]) -> TokenLogprobs:
    """Logprobs of one response choice or one stream chunk's choice."""
    out = TokenLogprobs()
    lp = choice.get("logprobs")
    if not lp:
        return out
    if kind == "chat":
        for tok in lp.get("content") or []:
            out.logprobs.append(_finite(tok.get("logprob")))
            out.top.append([_finite(t.get("logprob")) for t in tok.get("top_logprobs") or []])
    else:
        tops = lp.get("top_logprobs") or []
        for i, value in enumerate(lp.get("token_logprobs") or []):
            out.logprobs.append(_finite(value))
            top = tops[i] if i < len(tops) and tops[i] else {}
            out.top.append([_finite(v) for v in top.values()])
    return out


def entropy_of_top(top: Iterable[float]) -> float:
    """Entropy (nats) of the top-k distribution, renormalised: the tail beyond k is unknown."""
    probs = [math.exp(x) for x in top]
    total = sum(probs)
    if total <= 0:
        return 0.0
    return -sum(p / total * math.log(p / total) for p in probs if p > 0)


def score(method: str, tokens: TokenLogprobs) -> float | None:
    """The confidence score, or None when the answer carried no logprobs."""
    if not tokens.logprobs:
        return None
    if method == "mean_logprob":
        return sum(tokens.logprobs) / len(tokens.logprobs)
    if method == "min_logprob":
        return min(tokens.logprobs)
    if method == "mean_entropy":
        if not any(tokens.top):
            return None
        return sum(entropy_of_top(t) for t in tokens.top) / len(tokens.top)
    raise ValueError(f"score() does not compute {method}")


def should_escalate(config: ConfidenceConfig, value: float | None) -> bool:
    """No score (no logprobs came back) escalates: an unmeasured answer is not trusted."""
    if value is None:
        return True
    if config.method == "mean_entropy":
        return value > config.threshold
    return value < config.threshold
