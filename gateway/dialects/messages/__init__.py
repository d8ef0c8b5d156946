"""Anthropic's Messages API (`POST /v1/messages`, `/v1/messages/count_tokens`) in front of
the chat pipeline: `protocol` checks the request, `to_chat` and `from_chat` translate,
`stream` makes Anthropic's events from chat chunks, `errors` shapes the errors."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.responses import Response

from gateway.dialects.messages.errors import error_response
from gateway.dialects.messages.from_chat import message
from gateway.dialects.messages.protocol import CountTokensRequest, MessagesRequest
from gateway.dialects.messages.stream import MessagesStream
from gateway.dialects.messages.to_chat import chat_body, chat_prompt
from gateway.errors import ApiError
from gateway.request_schema import parse_body


class MessagesApi:
    """The Dialect for `POST /v1/messages`."""

    __slots__ = ()
    api = "messages"

    def parse(self, raw: bytes) -> dict[str, Any]:
        return chat_body(parse_body(raw, MessagesRequest))

    def answer(self, chat: dict[str, Any], body: dict[str, Any], request_id: str) -> dict[str, Any]:
        return message(chat, request_id)

    def encoder(self, body: dict[str, Any], request_id: str) -> MessagesStream:
        return MessagesStream(request_id)

    def error(self, err: ApiError, headers: Mapping[str, str] | None = None) -> Response:
        return error_response(err, headers)


def count_tokens_body(raw: bytes) -> dict[str, Any]:
    """A count_tokens request as the chat prompt it stands for."""
    return chat_prompt(parse_body(raw, CountTokensRequest))


__all__ = ["MessagesApi", "count_tokens_body"]
