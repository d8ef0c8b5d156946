"""Chat chunks as Anthropic's stream: message_start, ping, content blocks (text_delta,
input_json_delta), message_delta with the stop reason and usage, message_stop.

The event order is the one the `anthropic` SDK's stream helpers accumulate: a block is
started before its first delta and stopped before the next one starts."""

from __future__ import annotations

from typing import Any

import orjson

from gateway.dialects.base import cost_comment
from gateway.dialects.messages.errors import error_body
from gateway.dialects.messages.from_chat import message_id, stop_reason, usage
from gateway.errors import ApiError


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class MessagesStream:
    """One stream's Anthropic events; `chunk` is fed every chat chunk, `end` closes."""

    __slots__ = ("_block", "_broke", "_open", "_request_id", "_started", "_stop", "_tool", "_usage")

    def __init__(self, request_id: str) -> None:
        self._request_id = request_id
        self._started = False
        self._block = -1  # index of the latest content block
        self._open: str | None = None  # "text" | "tool_use": the block being written
        self._tool: int | None = None  # the chat tool call index the open tool block holds
        self._stop: tuple[str | None, str | None] = (None, None)
        self._usage: dict[str, Any] | None = None
        self._broke = False

    def _start(self, model: str | None) -> list[bytes]:
        self._started = True
        message = {
            "id": message_id(self._request_id),
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage(self._usage),
        }
        return [
            _event("message_start", {"type": "message_start", "message": message}),
            _event("ping", {"type": "ping"}),
        ]

    def _open_block(self, kind: str, block: dict[str, Any]) -> list[bytes]:
        out = self._close_block()
        self._block += 1
        self._open = kind
        start = {"type": "content_block_start", "index": self._block, "content_block": block}
        out.append(_event("content_block_start", start))
        return out

    def _close_block(self) -> list[bytes]:
        if self._open is None:
            return []
        self._open, self._tool = None, None
        return [_event("content_block_stop", {"type": "content_block_stop", "index": self._block})]

    def _delta(self, delta: dict[str, Any]) -> bytes:
        body = {"type": "content_block_delta", "index": self._block, "delta": delta}
        return _event("content_block_delta", body)

    def chunk(self, chunk: dict[str, Any]) -> bytes:
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        out = [] if self._started else self._start(chunk.get("model"))
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue  # Anthropic has one answer per request
            delta = choice.get("delta") or {}
            if text := delta.get("content"):
                if self._open != "text":
                    out += self._open_block("text", {"type": "text", "text": ""})
                out.append(self._delta({"type": "text_delta", "text": text}))
            for call in delta.get("tool_calls") or []:
                out += self._tool_delta(call)
            if choice.get("finish_reason"):
                self._stop = stop_reason(choice)
        return b"".join(out)

    def _tool_delta(self, call: dict[str, Any]) -> list[bytes]:
        out: list[bytes] = []
        function = call.get("function") or {}
        index = call.get("index", 0)
        if self._open != "tool_use" or self._tool != index:
            block = {"type": "tool_use", "id": call.get("id"), "name": function.get("name")}
            out += self._open_block("tool_use", {**block, "input": {}})
            self._tool = index
        if arguments := function.get("arguments"):
            out.append(self._delta({"type": "input_json_delta", "partial_json": arguments}))
        return out

    def error(self, err: ApiError) -> bytes:
        self._broke = True
        return b"event: error\ndata: " + error_body(err) + b"\n\n"

    def end(self, cost: float) -> bytes:
        # The cost as an SSE comment, which the SDKs skip, as on the OpenAI endpoints.
        comment = cost_comment(cost)
        if self._broke:
            return comment
        out = [] if self._started else self._start(None)
        out += self._close_block()
        reason, sequence = self._stop
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": reason or "end_turn", "stop_sequence": sequence},
            "usage": usage(self._usage),
        }
        out.append(_event("message_delta", delta))
        out.append(comment)
        out.append(_event("message_stop", {"type": "message_stop"}))
        return b"".join(out)
