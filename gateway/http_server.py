"""The HTTP/1.1 protocol the gateway serves with: uvicorn's httptools protocol plus the limits
it lacks.

uvicorn has no header read timeout and, with httptools, no limit on header count or size
(h11's max_incomplete_event_size bounds size only, and h11 parses slower). This subclass adds
them, so a slowloris or a header flood holds neither sockets nor memory:

- the request line and headers must arrive within `header_timeout_s` of the connection opening
  or of the request's first byte (408, then close); between requests uvicorn's keep-alive
  timeout applies as before;
- at most `max_headers` headers and `max_header_bytes` bytes of request line and headers
  (431, then close), counted as they arrive.

Its answers, and uvicorn's own 400 for a request it cannot parse, are OpenAI-shaped JSON.
The body's limits and timeout are the ASGI middleware's (gateway/http_limits.py).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.errors import ApiError


@dataclass(frozen=True, slots=True)
class ServerLimits:
    header_timeout_s: float = 10.0
    max_headers: int = 100
    max_header_bytes: int = 32 * 1024


class _Refused(Exception):
    """Raised from a parser callback to stop parsing; httptools wraps it in HttpParserError,
    and uvicorn answers that through send_400_response, which sends the refusal instead."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    limits: ClassVar[ServerLimits] = ServerLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._in_headers = False
        self._header_count = 0
        self._header_bytes = 0  # request line and complete headers, from the parser callbacks
        self._raw_bytes = 0  # bytes fed while this request's headers were incomplete
        self._refusal: ApiError | None = None

    # -- the header read timeout ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()  # a connection that never sends a byte is closed too

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(
                self.limits.header_timeout_s, self._header_timeout
            )

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # A response is still going out (a slow request pipelined behind it): let it end,
            # then close instead of waiting for the rest of these headers.
            self.cycle.keep_alive = False
            return
        s = self.limits.header_timeout_s
        self._send_error(
            ApiError(
                408, f"The request headers did not arrive within {s:g} s", code="request_timeout"
            )
        )

    # -- header count and size -----------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        was_in_headers = self._in_headers
        super().data_received(data)
        # A header still incomplete sits in httptools' buffer, unseen by on_header: count the
        # raw bytes too, so one endless header is cut off as it grows.
        if was_in_headers and self._in_headers and not self.transport.is_closing():
            self._raw_bytes += len(data)
            if self._raw_bytes > self.limits.max_header_bytes:
                self._send_error(self._too_large())

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers = True
        self._header_count = self._header_bytes = self._raw_bytes = 0
        self._arm()

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self._count(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.limits.max_headers:
            self._refuse(
                ApiError(
                    431,
                    f"More than {self.limits.max_headers} request headers",
                    code="too_many_headers",
                )
            )
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._disarm()
        super().on_headers_complete()

    def _count(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > self.limits.max_header_bytes:
            self._refuse(self._too_large())

    def _too_large(self) -> ApiError:
        return ApiError(
            431,
            f"The request line and headers exceed {self.limits.max_header_bytes} bytes",
            code="headers_too_large",
        )

    def _refuse(self, error: ApiError) -> None:
        self._refusal = error
        raise _Refused

    # -- answers -------------------------------------------------------------------------------

    def send_400_response(self, msg: str) -> None:
        self._send_error(self._refusal or ApiError(400, msg, code="invalid_http_request"))

    def _send_error(self, error: ApiError) -> None:
        """Answer outside any ASGI cycle, then close."""
        self._disarm()
        body = error.body()
        head = [f"HTTP/1.1 {error.status} {HTTPStatus(error.status).phrase}\r\n".encode()]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head.append(
            b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
            % len(body)
        )
        self.transport.write(b"".join(head) + body)
        self.transport.close()


def guarded_protocol(limits: ServerLimits) -> type[GuardedHttpToolsProtocol]:
    """The protocol class to give uvicorn (`http=`), with these limits."""
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), {"limits": limits})
