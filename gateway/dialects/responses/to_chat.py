"""A Responses request as the OpenAI chat body the pipeline routes."""

from __future__ import annotations

from typing import Any

from gateway.dialects.responses.protocol import (
    FunctionCallItem,
    FunctionCallOutputItem,
    InputImage,
    MessageItem,
    Part,
    ResponsesRequest,
)
from gateway.errors import ApiError

_STATELESS = "Routegate keeps no conversation state: send the whole conversation in 'input'"


def chat_body(req: ResponsesRequest) -> dict[str, Any]:
    if req.previous_response_id is not None:
        raise ApiError(
            400,
            f"'previous_response_id' is not supported. {_STATELESS}",
            code="unsupported_parameter",
            param="previous_response_id",
        )
    if req.store:
        raise ApiError(
            400,
            f"'store': true is not supported. {_STATELESS}",
            code="unsupported_parameter",
            param="store",
        )
    messages: list[dict[str, Any]] = []
    if req.instructions:
        messages.append({"role": "system", "content": req.instructions})
    if isinstance(req.input, str):
        messages.append({"role": "user", "content": req.input})
    else:
        for item in req.input:
            _add(messages, item)
    body: dict[str, Any] = {"model": req.model, "messages": messages}
    if req.tools:
        # Only function tools pass the schema: the hosted ones need OpenAI's servers.
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": tool.name,
                    "description": tool.description or "",
                    "parameters": tool.parameters or {"type": "object", "properties": {}},
                    **({"strict": tool.strict} if tool.strict is not None else {}),
                },
            }
            for tool in req.tools
        ]
    if req.tool_choice is not None:
        choice = req.tool_choice
        body["tool_choice"] = (
            choice
            if isinstance(choice, str)
            else {"type": "function", "function": {"name": choice.name}}
        )
    optional = {
        "parallel_tool_calls": req.parallel_tool_calls,
        "max_tokens": req.max_output_tokens,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "user": req.user,
    }
    body.update({name: value for name, value in optional.items() if value is not None})
    fmt = req.text.format if req.text is not None else None
    if fmt is not None and fmt.type == "json_object":
        body["response_format"] = {"type": "json_object"}
    elif fmt is not None and fmt.type == "json_schema":
        schema: dict[str, Any] = {"name": fmt.name, "schema": fmt.schema_}
        if fmt.strict is not None:
            schema["strict"] = fmt.strict
        if fmt.description:
            schema["description"] = fmt.description
        body["response_format"] = {"type": "json_schema", "json_schema": schema}
    if req.stream:
        # The usage comes in the last chunk: response.completed reports it.
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def _add(
    messages: list[dict[str, Any]], item: MessageItem | FunctionCallItem | FunctionCallOutputItem
) -> None:
    if isinstance(item, MessageItem):
        role = "system" if item.role == "developer" else item.role
        messages.append({"role": role, "content": _content(item.content)})
    elif isinstance(item, FunctionCallItem):
        call = {
            "id": item.call_id,
            "type": "function",
            "function": {"name": item.name, "arguments": item.arguments},
        }
        # Consecutive calls are one assistant turn with several tool_calls, as chat has them.
        last = messages[-1] if messages else None
        if last is not None and last["role"] == "assistant" and "tool_calls" in last:
            last["tool_calls"].append(call)
        else:
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
    else:
        output = item.output
        text = output if isinstance(output, str) else _text(output)
        messages.append({"role": "tool", "tool_call_id": item.call_id, "content": text})


def _content(content: str | list[Part]) -> str | list[dict[str, Any]]:
    """Text alone as a string (every chat template takes it); with images, chat parts."""
    if isinstance(content, str):
        return content
    if not any(isinstance(p, InputImage) for p in content):
        return _text(content)
    return [_part(p) for p in content]


def _part(part: Part) -> dict[str, Any]:
    if isinstance(part, InputImage):
        url = part.image_url or part.file_data
        image: dict[str, Any] = {"url": url}
        if part.detail:
            image["detail"] = part.detail
        return {"type": "image_url", "image_url": image}
    return {"type": "text", "text": part.text}


def _text(parts: list[Part]) -> str:
    return "".join(p.text for p in parts if not isinstance(p, InputImage))
