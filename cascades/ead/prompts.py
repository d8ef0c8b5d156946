"""The prompt text of a request, for models that continue raw text (vLLM's completions API)."""

from __future__ import annotations

from typing import Any


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if not content:
        return ""
    return "".join(p.get("text", "") for p in content if isinstance(p, dict))


def plain_chat_prompt(messages: list[dict[str, Any]]) -> str:
    """For a model without a chat template: "Role: content" paragraphs, then "Assistant:"."""
    parts = [
        f"{str(m.get('role', 'user')).capitalize()}: {_content_text(m.get('content'))}"
        for m in messages
    ]
    return "\n\n".join([*parts, "Assistant:"])
