"""A judge model's yes/no on an answer, as the probability of "yes".

The judge is asked for one token with its top logprobs: P(yes) is the probability mass on
"yes" against "no" among them. A judge that returns no logprobs is read from its text.
"""

from __future__ import annotations

import math
from typing import Any

from gateway.backends.base import Backend, CallLimits, Completion, Kind
from gateway.tokens import prompt_tokens_upper

_SYSTEM = (
    "You check answers. Reply with exactly one word: yes if the answer is correct and "
    "complete for the request, no otherwise."
)


def _request_text(kind: Kind, body: dict[str, Any]) -> str:
    if kind == "completions":
        prompt = body.get("prompt")
        return prompt if isinstance(prompt, str) else str(prompt)
    parts = []
    for message in body.get("messages") or []:
        content = message.get("content")
        if isinstance(content, list):  # content parts: keep the text ones
            content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        parts.append(f"{message.get('role', 'user')}: {content or ''}")
    return "\n".join(parts)


# What the judge reads of the request and of the answer: a judge with a short context must
# still get a question it can read: the end of the conversation, the start of the answer.
MAX_JUDGED_CHARS = 2000


def judge_body(kind: Kind, body: dict[str, Any], answer: str, top_k: int) -> dict[str, Any]:
    question = _request_text(kind, body)[-MAX_JUDGED_CHARS:]
    answer = answer[:MAX_JUDGED_CHARS]
    return {
        "messages": [
            {"role": "system", "content": _SYSTEM},
            {
                "role": "user",
                "content": f"Request:\n{question}\n\nAnswer:\n{answer}\n\n"
                "Is the answer correct and complete? yes or no.",
            },
        ],
        "max_tokens": 1,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": top_k,
    }


def judge_prompt_bound(top_k: int) -> int:
    """The most prompt tokens one judge call can send: its fixed text (counted like any
    request, gateway.tokens.prompt_tokens_upper) plus the question and the answer, each cut to
    MAX_JUDGED_CHARS characters of at most 4 UTF-8 bytes, and never more tokens than bytes."""
    fixed = prompt_tokens_upper(judge_body("chat", {"messages": []}, "", top_k))
    return fixed + 2 * 4 * MAX_JUDGED_CHARS


def p_yes(judged: Completion) -> float:
    choice = (judged.body.get("choices") or [{}])[0]
    content = ((choice.get("logprobs") or {}).get("content")) or []
    yes = no = 0.0
    if content:
        for alt in content[0].get("top_logprobs") or []:
            word = str(alt.get("token", "")).strip().lower()
            p = math.exp(max(float(alt.get("logprob") or -9999.0), -9999.0))
            if word.startswith("yes"):
                yes += p
            elif word.startswith("no"):
                no += p
    if yes + no > 0:
        return yes / (yes + no)
    text = str((choice.get("message") or {}).get("content") or "").strip().lower()
    return 1.0 if text.startswith("yes") else 0.0


async def ask_judge(
    judge: Backend, kind: Kind, body: dict[str, Any], answer: str, top_k: int, limits: CallLimits
) -> Completion:
    call = limits.call("chat", {"model": judge.name, **judge_body(kind, body, answer, top_k)})
    call.retries = 1
    return await judge.complete(call)
