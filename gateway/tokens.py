"""Token bounds read from a request body, before any upstream answers: the most prompt tokens
a prompt can hold and the most completion tokens a call may produce.

Pure functions of the request, no I/O, no imports from the gateway: budgets reserve on these
bounds, routers cost the typical count, and backends clamp an upstream's usage report to them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# No model reads or writes more tokens in one call (the longest contexts are ~10M tokens):
# the bound when neither the request nor the policy (`context_length`) gives a smaller one.
MAX_TOKENS_PER_CALL = 10_000_000
# Special tokens a tokenizer may add to a text prompt (BOS, EOS, a prefix space).
SPECIAL_TOKENS = 4
# The most tokens one non-text content part (an image, audio) may take; its bytes say nothing.
NON_TEXT_PART_TOKENS = 16_384
# What a chat template adds around a request's tools (the instructions that list them).
TOOLS_TEMPLATE_TOKENS = 512


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
            # An assistant turn's calls are rendered into the prompt too, as JSON.
            total += len(str(message.get("tool_calls") or "").encode())
            total += NON_TEXT_PART_TOKENS * _non_text_parts(content)
        return total + _tools_upper(body) + 16
    # A text completion's prompt, or an embeddings request's input: the same four shapes.
    prompt = body["prompt"] if "prompt" in body else body.get("input", "")
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


def _tools_upper(body: dict[str, Any]) -> int:
    tools = body.get("tools")
    return len(str(tools).encode()) + TOOLS_TEMPLATE_TOKENS if tools else 0


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


def embedding_bound(body: dict[str, Any], context_length: int | None = None) -> CallBound:
    """The most tokens an embeddings call can report: its inputs (each at most the model's
    context), and nothing generated."""
    inputs = body.get("input")
    several = isinstance(inputs, list) and inputs and not isinstance(inputs[0], int)
    count = len(inputs) if several else 1
    ceiling = (context_length or MAX_TOKENS_PER_CALL) * count
    return CallBound(min(prompt_tokens_upper(body), ceiling), 0)
