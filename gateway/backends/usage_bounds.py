"""What an upstream's usage report can truthfully say about one call, and the clamp to it.

An upstream reports the tokens it counted; the gateway charges them. A report no call can
produce (negative, not an integer, more completion tokens than the call allowed, more prompt
tokens than the prompt can hold) is an upstream anomaly: the numbers charged are clamped into
what is possible, and the report is kept beside them for the request log and the metrics.

Pure functions, no I/O: every backend reads each call's usage through `read_usage`, with the
bound of that call's own body (for EAD, the prompt with the text written so far).
"""

from __future__ import annotations

import math
from typing import Any

from gateway.backends.base import Usage
from gateway.tokens import SPECIAL_TOKENS, CallBound


def _json_safe(value: Any) -> Any:
    """What the upstream sent, fit for a JSON log row: ints beyond 64 bits and odd types as
    short text."""
    if value is None or isinstance(value, bool | str):
        return value if not isinstance(value, str) else value[:40]
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**63 else str(value)[:40]
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    return repr(value)[:40]


def _field(value: Any, bound: int, estimate: int, kinds: list[str]) -> tuple[int, bool]:
    """One reported count, clamped into [0, bound]; and whether it is the upstream's number."""
    if value is None:
        kinds.append("missing")
        return min(estimate, bound), False
    if isinstance(value, bool) or not isinstance(value, int | float):
        kinds.append("not_a_number")
        return min(estimate, bound), False
    if isinstance(value, float):
        if not math.isfinite(value):
            kinds.append("not_a_number")
            return min(estimate, bound), False
        if not value.is_integer():
            kinds.append("not_an_integer")
    n = math.ceil(value)
    if n < 0:
        kinds.append("negative")
        return 0, False
    if n > bound:
        kinds.append("over_bound")
        return bound, False
    return n, True


def read_usage(raw: Any, bound: CallBound, completion_estimate: int | None = None) -> Usage:
    """The usage to charge for a call whose upstream reported `raw` (its `usage` object).

    Counts that are missing or not numbers are estimated: the prompt at its bound, the answer
    at `completion_estimate` (e.g. its bytes) or else at its bound, both inexact; a count out
    of range is clamped into it. Any of these sets `Usage.anomaly`."""
    kinds: list[str] = []
    estimate = bound.completion if completion_estimate is None else completion_estimate
    missing = not isinstance(raw, dict) or not raw
    fields = {} if missing else raw
    prompt, p_ok = _field(fields.get("prompt_tokens"), bound.prompt, bound.prompt, kinds)
    completion, c_ok = _field(fields.get("completion_tokens"), bound.completion, estimate, kinds)
    usage = Usage(prompt, completion, p_ok and c_ok, cached_tokens=cached_tokens(fields, prompt))
    if kinds:
        kinds = ["missing_usage"] if missing else list(dict.fromkeys(kinds))
        usage.anomaly = {
            "kinds": kinds,
            "reported": {
                k: _json_safe(fields.get(k)) for k in ("prompt_tokens", "completion_tokens")
            },
            "bound": {"prompt_tokens": bound.prompt, "completion_tokens": bound.completion},
        }
    return usage


def cached_tokens(usage: dict[str, Any], prompt_tokens: int) -> int:
    """The prompt tokens a usage report says were read from cache, within [0, prompt_tokens].

    OpenAI and vLLM (`--enable-prompt-tokens-details`) send `prompt_tokens_details.
    cached_tokens`; litellm passes Anthropic's cache reads as `cache_read_input_tokens` too.
    A count that is no number or out of range is not trusted to discount anything: cached
    tokens only lower a charge, so an odd report is read as no cache hit, not clamped up."""
    details = usage.get("prompt_tokens_details")
    value = details.get("cached_tokens") if isinstance(details, dict) else None
    if value is None:
        value = usage.get("cache_read_input_tokens")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return 0
    return min(max(0, math.floor(value)), prompt_tokens)


def answer_bytes(kind: str, body: dict[str, Any]) -> int:
    """UTF-8 bytes of a whole answer's text: a bound on its tokens when none were reported
    (each generated token decodes to at least one byte, special tokens aside)."""
    total = 0
    for choice in body.get("choices") or []:
        if not isinstance(choice, dict):
            continue
        if kind == "chat":
            message = choice.get("message")
            part = message if isinstance(message, dict) else {}
            text = str(part.get("content") or "") + str(part.get("tool_calls") or "")
        else:
            text = str(choice.get("text") or "")
        total += len(text.encode()) + SPECIAL_TOKENS
    return total


def read_embedding_usage(raw: Any, bound: CallBound) -> Usage:
    """`read_usage` for an embeddings call: its prompt tokens only (OpenAI's embeddings usage
    has no completion_tokens, and nothing is generated)."""
    fields = raw if isinstance(raw, dict) else {}
    kinds: list[str] = []
    prompt, ok = _field(fields.get("prompt_tokens"), bound.prompt, bound.prompt, kinds)
    usage = Usage(prompt, 0, ok)
    if kinds:
        usage.anomaly = {
            "kinds": ["missing_usage"] if not fields else kinds,
            "reported": {"prompt_tokens": _json_safe(fields.get("prompt_tokens"))},
            "bound": {"prompt_tokens": bound.prompt, "completion_tokens": 0},
        }
    return usage


def _malformed_embeddings(body: dict[str, Any]) -> str | None:
    data = body.get("data")
    if not isinstance(data, list) or not data:
        return "the answer has no data"
    for item in data:
        if not isinstance(item, dict) or not isinstance(item.get("embedding"), list | str):
            return "an item of data has no embedding"
    return None


def malformed_choices(kind: str, body: Any) -> str | None:
    """Why a 200 answer cannot be passed on as an OpenAI answer, or None when it can."""
    if not isinstance(body, dict):
        return "the answer is not a JSON object"
    if kind == "embeddings":
        return _malformed_embeddings(body)
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices:
        return "the answer has no choices"
    for choice in choices:
        if not isinstance(choice, dict):
            return "a choice is not an object"
        if kind == "chat" and not isinstance(choice.get("message"), dict):
            return "a choice has no message"
        if kind == "completions" and not isinstance(choice.get("text"), str):
            return "a choice has no text"
    return None


def estimated_usage(prompt: int, completion: int, bound: CallBound) -> Usage:
    """The gateway's own count for a call whose upstream reported no usage: clamped like a
    report, inexact, and flagged (an answer without usage is never charged nothing)."""
    usage = read_usage({"prompt_tokens": prompt, "completion_tokens": completion}, bound)
    usage.exact = False
    usage.anomaly = {
        "kinds": ["missing_usage"],
        "reported": None,
        "bound": {"prompt_tokens": bound.prompt, "completion_tokens": bound.completion},
    }
    return usage
