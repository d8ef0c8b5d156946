"""An Anthropic Messages request as the OpenAI chat body the pipeline routes."""

from __future__ import annotations

from typing import Any

import orjson

from gateway.dialects.messages.protocol import (
    CountTokensRequest,
    ImageBlock,
    MessageParam,
    MessagesRequest,
    TextBlock,
    ToolChoice,
    ToolResultBlock,
    ToolUseBlock,
)


def chat_body(req: MessagesRequest) -> dict[str, Any]:
    body = chat_prompt(req)
    body["max_tokens"] = req.max_tokens
    optional = {
        "temperature": req.temperature,
        "top_p": req.top_p,
        "top_k": req.top_k,  # vLLM takes it; litellm passes it on where the provider does
        "stop": req.stop_sequences,
        "user": req.metadata.user_id if req.metadata is not None else None,
    }
    body.update({name: value for name, value in optional.items() if value is not None})
    if req.output_config is not None and req.output_config.format is not None:
        schema = req.output_config.format.schema_
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": schema, "strict": True},
        }
    if req.stream:
        # The usage comes in the last chunk: message_delta reports it.
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def chat_prompt(req: MessagesRequest | CountTokensRequest) -> dict[str, Any]:
    """The model, messages and tools: all that count_tokens needs."""
    messages: list[dict[str, Any]] = []
    if req.system:
        system = req.system if isinstance(req.system, str) else _joined(req.system)
        messages.append({"role": "system", "content": system})
    for message in req.messages:
        messages.extend(_chat_messages(message))
    body: dict[str, Any] = {"model": req.model, "messages": messages}
    if req.tools:
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": tool.name,
                    "description": tool.description or "",
                    "parameters": tool.input_schema,
                },
            }
            for tool in req.tools
        ]
    if req.tool_choice is not None:
        body.update(_tool_choice(req.tool_choice))
    return body


def _tool_choice(choice: ToolChoice) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if choice.type == "tool":
        out["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
    else:
        out["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[choice.type]
    if choice.disable_parallel_tool_use is not None and choice.type != "none":
        out["parallel_tool_calls"] = not choice.disable_parallel_tool_use
    return out


def _chat_messages(message: MessageParam) -> list[dict[str, Any]]:
    """One Anthropic message as chat messages: an assistant's tool_use blocks become its
    tool_calls; a user's tool_result blocks become `tool` messages, ahead of the rest."""
    content = message.content
    if isinstance(content, str):
        return [{"role": message.role, "content": content}]
    if message.role == "assistant":
        text = _joined([b for b in content if isinstance(b, TextBlock)])
        calls = [
            {
                "id": block.id,
                "type": "function",
                "function": {"name": block.name, "arguments": orjson.dumps(block.input).decode()},
            }
            for block in content
            if isinstance(block, ToolUseBlock)
        ]
        out: dict[str, Any] = {"role": "assistant", "content": text or None}
        if calls:
            out["tool_calls"] = calls
        return [out]
    results = [
        {"role": "tool", "tool_call_id": block.tool_use_id, "content": _result_text(block)}
        for block in content
        if isinstance(block, ToolResultBlock)
    ]
    parts = [block for block in content if isinstance(block, TextBlock | ImageBlock)]
    if parts:
        results.append({"role": "user", "content": _content(parts)})
    return results


def _content(parts: list[TextBlock | ImageBlock]) -> str | list[dict[str, Any]]:
    """Text alone as a string (every chat template takes it); with images, chat parts."""
    if all(isinstance(p, TextBlock) for p in parts):
        return _joined([p for p in parts if isinstance(p, TextBlock)])
    return [_part(p) for p in parts]


def _part(block: TextBlock | ImageBlock) -> dict[str, Any]:
    if isinstance(block, TextBlock):
        return {"type": "text", "text": block.text}
    source = block.source
    url = source.url if source.type == "url" else f"data:{source.media_type};base64,{source.data}"
    return {"type": "image_url", "image_url": {"url": url}}


def _result_text(block: ToolResultBlock) -> str:
    content = block.content
    if content is None:
        text = ""
    elif isinstance(content, str):
        text = content
    else:
        text = _joined([p for p in content if isinstance(p, TextBlock)])
    return f"Error: {text}" if block.is_error else text


def _joined(blocks: list[TextBlock]) -> str:
    return "\n\n".join(block.text for block in blocks)
