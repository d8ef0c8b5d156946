"""The two things a dialect gives the pipeline: the dialect itself, and its stream encoder."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from starlette.responses import Response

from gateway.errors import ApiError

H_COST = "x-routegate-cost-usd"


def cost_comment(cost: float) -> bytes:
    """A stream's cost, known only at its end: an SSE comment, which every SDK skips."""
    return f": {H_COST}={cost:.10f}\n\n".encode()


class StreamEncoder(Protocol):
    """One stream's server-sent events, made from the chat chunks as they come (stateful)."""

    def chunk(self, chunk: dict[str, Any]) -> bytes:
        """The events for one chat chunk (b"" for none)."""
        ...

    def error(self, err: ApiError) -> bytes:
        """The in-band error event of a stream that broke after it started."""
        ...

    def end(self, cost: float) -> bytes:
        """The closing events, once the stream ran to its end (or broke: after `error`)."""
        ...


class Dialect(Protocol):
    """An API in front of the chat pipeline (`api`: its name in the request log)."""

    api: str

    def parse(self, raw: bytes) -> dict[str, Any]:
        """The request as a chat body (stream flag kept), or ApiError 400 naming its field."""
        ...

    def answer(self, chat: dict[str, Any], body: dict[str, Any], request_id: str) -> dict[str, Any]:
        """A whole chat completion as this API's answer to the chat request `body`."""
        ...

    def encoder(self, body: dict[str, Any], request_id: str) -> StreamEncoder:
        """A new encoder for one stream of the chat request `body`."""
        ...

    def error(self, err: ApiError, headers: Mapping[str, str] | None = None) -> Response:
        """An error in this API's shape and status codes."""
        ...
