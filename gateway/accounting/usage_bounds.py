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
from dataclasses import dataclass
from typing import Any

from gateway.backends.base import Usage

# No model reads or writes more tokens in one call (the longest contexts are ~10M tokens):
# the bound when neither the request nor the policy (`context_length`) gives a smaller one.
MAX_TOKENS_PER_CALL = 10_000_000
# Special tokens a tokenizer may add to a text prompt (BOS, EOS, a prefix space).
SPECIAL_TOKENS = 4
# The most tokens one non-text content part (an image, audio) may take; its bytes say nothing.
NON_TEXT_PART_TOKENS = 16_384


def prompt_tokens_upper(body: dict[str, Any]) -> int:
    """A bound on the prompt's token count that no tokenizer exceeds in practice: one token per
    UTF-8 byte of the text, plus a chat template's overhead per message. Budgets use it, so
    the reservation can only be too large, never too small."""
    if "messages" in body:
        total = 0
        for message in body["messages"]:
            content = message.get("content")
            text = content if isinstance(content, str) else _parts_text(content)
            total += len(text.encode()) + len(str(message.get("role", ""))) + 16
            total += NON_TEXT_PART_TOKENS * _non_text_parts(content)
        return total + len(_tools_text(body)) + 16
    prompt = body.get("prompt", "")
    if isinstance(prompt, str):
        return len(prompt.encode()) + SPECIAL_TOKENS
    if prompt and isinstance(prompt[0], list):  # several token-id prompts
        return sum(len(p) for p in prompt)
    if prompt and isinstance(prompt[0], int):  # one token-id prompt
        return len(prompt)
    return sum(len(str(p).encode()) + SPECIAL_TOKENS for p in prompt)


def _parts_text(content: Any) -> str:
    if not content:
        return ""
    return " ".join(str(p.get("text", "")) if isinstance(p, dict) else str(p) for p in content)


def _non_text_parts(content: Any) -> int:
    if not isinstance(content, list):
        return 0
    return sum(1 for p in content if isinstance(p, dict) and p.get("type", "text") != "text")


def _tools_text(body: dict[str, Any]) -> str:
    tools = body.get("tools")
    return str(tools) if tools else ""


def count_param(value: Any) -> int | None:
    """A positive count the upstream will read from a request field, as pydantic's lax int
    does (7, 7.0, "7"); None when it reads none (absent, zero, negative, not a number)."""
    if isinstance(value, str):
        value = value.strip()
        if not value.isdigit():
            return None
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or value <= 0:
        return None
    return value


def completion_limit(body: dict[str, Any]) -> int | None:
    """The largest answer length the request sets that the upstream may honour: chat servers
    read max_completion_tokens or max_tokens (vLLM prefers the first, others the second), so the
    larger; text completions read max_tokens only. None when the request sets neither."""
    keys = ("max_tokens",) if "messages" not in body else ("max_tokens", "max_completion_tokens")
    limits = [n for k in keys if (n := count_param(body.get(k))) is not None]
    return max(limits, default=None)


def sequences(body: dict[str, Any]) -> int:
    """How many answers of the limit's length one call may generate: n (best_of, which the
    upstream generates and bills even when it returns fewer, is at least n), once per prompt
    of a batched text completion."""
    per_prompt = max(count_param(body.get("n")) or 1, count_param(body.get("best_of")) or 1)
    prompt = body.get("prompt")
    prompts = (
        len(prompt) if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int) else 1
    )
    return per_prompt * max(prompts, 1)


def completion_cap(body: dict[str, Any]) -> int | None:
    """The most completion tokens the call may produce, when the request bounds it."""
    limit = completion_limit(body)
    return None if limit is None else limit * sequences(body)


@dataclass(frozen=True, slots=True)
class CallBound:
    """The most tokens one upstream call can truthfully report."""

    prompt: int
    completion: int


def call_bound(body: dict[str, Any], context_length: int | None = None) -> CallBound:
    ceiling = context_length or MAX_TOKENS_PER_CALL
    cap = completion_cap(body)
    return CallBound(
        min(prompt_tokens_upper(body), ceiling), ceiling if cap is None else min(cap, ceiling)
    )


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
    usage = Usage(prompt, completion, p_ok and c_ok)
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


def usage_object(usage: Usage) -> dict[str, int]:
    """OpenAI's `usage` for what is charged: it replaces an anomalous report in the answer."""
    p, c = usage.prompt_tokens, usage.completion_tokens
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


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


def malformed_choices(kind: str, body: Any) -> str | None:
    """Why a 200 answer cannot be passed on as an OpenAI answer, or None when it can."""
    if not isinstance(body, dict):
        return "the answer is not a JSON object"
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
