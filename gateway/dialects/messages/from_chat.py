"""A chat completion as Anthropic's message: content blocks, stop reason and usage."""

from __future__ import annotations

from typing import Any

import orjson

_STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def message_id(request_id: str) -> str:
    """The gateway's request id (x-routegate-request-id) in Anthropic's form."""
    return "msg_" + request_id.removeprefix("rg-")


def stop_reason(choice: dict[str, Any]) -> tuple[str | None, str | None]:
    """(stop_reason, stop_sequence). vLLM names the stop string it met in `stop_reason`."""
    finish = choice.get("finish_reason")
    if finish is None:
        return None, None
    matched = choice.get("stop_reason")
    if finish == "stop" and isinstance(matched, str):
        return "stop_sequence", matched
    return _STOP_REASONS.get(finish, "end_turn"), None


def tool_input(arguments: str | None) -> dict[str, Any]:
    """A tool call's arguments as the object Anthropic's `input` is; text that is not a JSON
    object is kept whole, under "arguments", rather than lost."""
    try:
        value = orjson.loads(arguments or "{}")
    except orjson.JSONDecodeError:
        return {"arguments": arguments}
    return value if isinstance(value, dict) else {"arguments": value}


def usage(chat_usage: dict[str, Any] | None) -> dict[str, int]:
    u = chat_usage or {}
    prompt = int(u.get("prompt_tokens") or 0)
    out = {"input_tokens": prompt, "output_tokens": int(u.get("completion_tokens") or 0)}
    details = u.get("prompt_tokens_details")
    cached = int((details if isinstance(details, dict) else {}).get("cached_tokens") or 0)
    if 0 < cached <= prompt:
        # Anthropic's input_tokens are the uncached ones; the cache reads are counted apart.
        out["input_tokens"] = prompt - cached
        out["cache_read_input_tokens"] = cached
    return out


def message(chat: dict[str, Any], request_id: str) -> dict[str, Any]:
    choice = (chat.get("choices") or [{}])[0]
    said = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if said.get("content"):
        content.append({"type": "text", "text": said["content"]})
    for call in said.get("tool_calls") or []:
        function = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id"),
                "name": function.get("name"),
                "input": tool_input(function.get("arguments")),
            }
        )
    reason, sequence = stop_reason(choice)
    return {
        "id": message_id(request_id),
        "type": "message",
        "role": "assistant",
        "model": chat.get("model"),
        "content": content,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": usage(chat.get("usage")),
    }
