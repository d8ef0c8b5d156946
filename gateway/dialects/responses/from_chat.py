"""A chat completion as a Responses `response` object: output items, status and usage."""

from __future__ import annotations

import time
from typing import Any


def response_id(request_id: str) -> str:
    """The gateway's request id (x-routegate-request-id) in the Responses form."""
    return "resp_" + request_id.removeprefix("rg-")


def message_item_id(request_id: str) -> str:
    return "msg_" + request_id.removeprefix("rg-")


def call_item_id(request_id: str, index: int) -> str:
    return f"fc_{request_id.removeprefix('rg-')}_{index}"


def usage(chat_usage: dict[str, Any] | None) -> dict[str, Any]:
    u = chat_usage or {}
    prompt = int(u.get("prompt_tokens") or 0)
    completion = int(u.get("completion_tokens") or 0)
    cached = int((u.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    return {
        "input_tokens": prompt,
        "output_tokens": completion,
        "total_tokens": prompt + completion,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens_details": {"reasoning_tokens": 0},
    }


def echo(body: dict[str, Any] | None) -> dict[str, Any]:
    """The request settings a response repeats, read back from the chat body (defaults where
    no body is at hand: a whole answer is shaped from the chat completion alone)."""
    b = body or {}
    messages = b.get("messages") or []
    first = messages[0] if messages else {}
    fmt = b.get("response_format") or {"type": "text"}
    if fmt.get("type") == "json_schema":
        schema = fmt.get("json_schema") or {}
        fmt = {"type": "json_schema", **schema}
    choice = b.get("tool_choice", "auto")
    if isinstance(choice, dict):
        choice = {"type": "function", "name": (choice.get("function") or {}).get("name")}
    return {
        "instructions": first.get("content") if first.get("role") == "system" else None,
        "tools": [
            {
                "type": "function",
                "name": t["function"]["name"],
                "description": t["function"].get("description"),
                "parameters": t["function"].get("parameters"),
                "strict": t["function"].get("strict"),
            }
            for t in b.get("tools") or []
        ],
        "tool_choice": choice,
        "parallel_tool_calls": b.get("parallel_tool_calls", True),
        "temperature": b.get("temperature"),
        "top_p": b.get("top_p"),
        "max_output_tokens": b.get("max_tokens"),
        "text": {"format": fmt},
        "metadata": {},
        "user": b.get("user"),
        "store": False,
        "previous_response_id": None,
        "reasoning": None,
        "truncation": "disabled",
    }


def response(
    request_id: str,
    model: str | None,
    output: list[dict[str, Any]],
    *,
    status: str,
    chat_usage: dict[str, Any] | None,
    body: dict[str, Any] | None = None,
    created_at: int | None = None,
) -> dict[str, Any]:
    return {
        "id": response_id(request_id),
        "object": "response",
        "created_at": created_at if created_at is not None else int(time.time()),
        "status": status,
        "model": model or "",
        "output": output,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "usage": usage(chat_usage) if status != "in_progress" else None,
        **echo(body),
    }


def status_of(finish_reason: str | None) -> str:
    return "incomplete" if finish_reason == "length" else "completed"


def text_item(request_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {
        "type": "message",
        "id": message_item_id(request_id),
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }


def call_item(
    request_id: str, index: int, call_id: str, name: str, arguments: str, status: str
) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": call_item_id(request_id, index),
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def answer(
    chat: dict[str, Any], request_id: str, body: dict[str, Any] | None = None
) -> dict[str, Any]:
    choice = (chat.get("choices") or [{}])[0]
    said = choice.get("message") or {}
    output: list[dict[str, Any]] = []
    if said.get("content"):
        output.append(text_item(request_id, said["content"]))
    for index, call in enumerate(said.get("tool_calls") or []):
        function = call.get("function") or {}
        output.append(
            call_item(
                request_id,
                index,
                call.get("id") or call_item_id(request_id, index),
                function.get("name") or "",
                function.get("arguments") or "",
                "completed",
            )
        )
    return response(
        request_id,
        chat.get("model"),
        output,
        status=status_of(choice.get("finish_reason")),
        chat_usage=chat.get("usage"),
        body=body,
        created_at=chat.get("created"),
    )
