"""Chat chunks as the Responses stream: response.created and .in_progress, then per output
item output_item.added, its content (a message's content_part and output_text deltas, a
function call's argument deltas), their .done events and output_item.done, and last
response.completed (or .incomplete) with the whole response and its usage.

Every event carries a `sequence_number`; an item is closed before the next one is added,
which is the order the `openai` SDK's stream helper accumulates."""

from __future__ import annotations

import time
from typing import Any

import orjson

from gateway.dialects.base import cost_comment
from gateway.dialects.responses.from_chat import (
    call_item,
    call_item_id,
    response,
    status_of,
    text_item,
)
from gateway.errors import ApiError


class ResponsesStream:
    """One stream's Responses events; `chunk` is fed every chat chunk, `end` closes."""

    __slots__ = (
        "_body",
        "_broke",
        "_calls",
        "_created",
        "_finish",
        "_model",
        "_open",
        "_output",
        "_request_id",
        "_seq",
        "_started",
        "_text",
        "_tool",
        "_usage",
    )

    def __init__(self, body: dict[str, Any], request_id: str) -> None:
        self._body = body
        self._request_id = request_id
        self._created = int(time.time())
        self._seq = 0
        self._started = False
        self._broke = False
        self._model: str | None = None
        self._output: list[dict[str, Any]] = []  # the items closed so far
        self._open: dict[str, Any] | None = None  # the item being written
        self._text = ""  # the open message's text so far
        self._calls = 0  # function call items begun
        self._tool: int | None = None  # the chat tool call index the open call item holds
        self._finish: str | None = None
        self._usage: dict[str, Any] | None = None

    def _event(self, kind: str, data: dict[str, Any]) -> bytes:
        payload = {"type": kind, "sequence_number": self._seq, **data}
        self._seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"

    def _response(self, status: str) -> dict[str, Any]:
        output = [*self._output]
        return response(
            self._request_id,
            self._model,
            output,
            status=status,
            chat_usage=self._usage,
            body=self._body,
            created_at=self._created,
        )

    def _start(self) -> list[bytes]:
        self._started = True
        now = self._response("in_progress")
        return [
            self._event("response.created", {"response": now}),
            self._event("response.in_progress", {"response": now}),
        ]

    def _open_text(self) -> list[bytes]:
        out = self._close()
        item = text_item(self._request_id, "", "in_progress")
        item["content"] = []
        self._open, self._text = item, ""
        index = len(self._output)
        part = {"type": "output_text", "text": "", "annotations": []}
        out.append(self._event("response.output_item.added", {"output_index": index, "item": item}))
        out.append(
            self._event(
                "response.content_part.added",
                {"item_id": item["id"], "output_index": index, "content_index": 0, "part": part},
            )
        )
        return out

    def _open_call(self, chat_index: int, call_id: str, name: str) -> list[bytes]:
        out = self._close()
        item = call_item(self._request_id, self._calls, call_id, name, "", "in_progress")
        self._calls += 1
        self._open, self._tool = item, chat_index
        index = len(self._output)
        shown = {**item}
        out.append(
            self._event("response.output_item.added", {"output_index": index, "item": shown})
        )
        return out

    def _close(self) -> list[bytes]:
        item = self._open
        if item is None:
            return []
        self._open, self._tool = None, None
        index = len(self._output)
        out: list[bytes] = []
        if item["type"] == "message":
            where = {"item_id": item["id"], "output_index": index, "content_index": 0}
            text = self._text
            part = {"type": "output_text", "text": text, "annotations": []}
            out.append(
                self._event("response.output_text.done", {**where, "text": text, "logprobs": []})
            )
            out.append(self._event("response.content_part.done", {**where, "part": part}))
            done = text_item(self._request_id, text)
        else:
            out.append(
                self._event(
                    "response.function_call_arguments.done",
                    {
                        "item_id": item["id"],
                        "output_index": index,
                        "name": item["name"],
                        "arguments": item["arguments"],
                    },
                )
            )
            done = {**item, "status": "completed"}
        self._output.append(done)
        out.append(self._event("response.output_item.done", {"output_index": index, "item": done}))
        return out

    def chunk(self, chunk: dict[str, Any]) -> bytes:
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        if self._model is None and chunk.get("model"):
            self._model = chunk["model"]
        out = [] if self._started else self._start()
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue  # a response has one answer
            delta = choice.get("delta") or {}
            if text := delta.get("content"):
                if self._open is None or self._open["type"] != "message":
                    out += self._open_text()
                self._text += text
                assert self._open is not None
                out.append(
                    self._event(
                        "response.output_text.delta",
                        {
                            "item_id": self._open["id"],
                            "output_index": len(self._output),
                            "content_index": 0,
                            "delta": text,
                            "logprobs": [],
                        },
                    )
                )
            for call in delta.get("tool_calls") or []:
                out += self._call_delta(call)
            if choice.get("finish_reason"):
                self._finish = choice["finish_reason"]
        return b"".join(out)

    def _call_delta(self, call: dict[str, Any]) -> list[bytes]:
        out: list[bytes] = []
        function = call.get("function") or {}
        index = call.get("index", 0)
        item = self._open
        if item is None or item["type"] != "function_call" or self._tool != index:
            call_id = call.get("id") or call_item_id(self._request_id, self._calls)
            out += self._open_call(index, call_id, function.get("name") or "")
            item = self._open
        assert item is not None
        if function.get("name") and not item["name"]:
            item["name"] = function["name"]
        if arguments := function.get("arguments"):
            item["arguments"] += arguments
            out.append(
                self._event(
                    "response.function_call_arguments.delta",
                    {"item_id": item["id"], "output_index": len(self._output), "delta": arguments},
                )
            )
        return out

    def error(self, err: ApiError) -> bytes:
        # OpenAI ends a stream that broke with response.failed, the error inside it.
        self._broke = True
        out = [] if self._started else self._start()
        failed = self._response("failed")
        code = "rate_limit_exceeded" if err.status == 429 else "server_error"
        failed["error"] = {"code": code, "message": err.message}
        out.append(self._event("response.failed", {"response": failed}))
        return b"".join(out)

    def end(self, cost: float) -> bytes:
        # The cost as an SSE comment, which the SDKs skip, as on the chat endpoints.
        comment = cost_comment(cost)
        if self._broke:
            return comment
        out = [] if self._started else self._start()
        out += self._close()
        status = status_of(self._finish)
        kind = "response.incomplete" if status == "incomplete" else "response.completed"
        out.append(comment)
        out.append(self._event(kind, {"response": self._response(status)}))
        return b"".join(out)
