"""OpenAI's Responses API (`POST /v1/responses`, its stateless subset) in front of the chat
pipeline: `protocol` checks the request, `to_chat` and `from_chat` translate, `stream`
makes the typed Responses events from chat chunks; errors are OpenAI's (ApiError's own)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.responses import Response

from gateway.dialects.responses.from_chat import answer
from gateway.dialects.responses.protocol import ResponsesRequest
from gateway.dialects.responses.stream import ResponsesStream
from gateway.dialects.responses.to_chat import chat_body
from gateway.errors import ApiError
from gateway.request_schema import parse_body


class ResponsesApi:
    """The Dialect for `POST /v1/responses`."""

    __slots__ = ()
    api = "responses"

    def parse(self, raw: bytes) -> dict[str, Any]:
        return chat_body(parse_body(raw, ResponsesRequest))

    def answer(self, chat: dict[str, Any], body: dict[str, Any], request_id: str) -> dict[str, Any]:
        return answer(chat, request_id, body)

    def encoder(self, body: dict[str, Any], request_id: str) -> ResponsesStream:
        return ResponsesStream(body, request_id)

    def error(self, err: ApiError, headers: Mapping[str, str] | None = None) -> Response:
        return err.response(headers)  # Responses errors are OpenAI's own


__all__ = ["ResponsesApi"]
