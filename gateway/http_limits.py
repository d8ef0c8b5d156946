"""Request body limits and the body read timeout, enforced while the body is read.

A pure ASGI middleware: it wraps each request's `receive`, counts the bytes of its
`http.request` messages and raises ApiError 413 as soon as the path's limit is crossed (or at
once when Content-Length declares more), so no endpoint ever buffers more than its limit,
chunked or not. The whole body must arrive within `body_timeout_s` of the app's first read, or
the read raises ApiError 408: a client that stops half-way cannot hold the request open.
Both answers close the connection. The endpoints answer them as they answer any ApiError
(the chat pipeline with its request log row, the rest through the app's handler).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import ApiError

KIB = 1024


@dataclass(frozen=True, slots=True)
class BodyLimits:
    """Bytes a request body may have, by path. `/v1/` takes the serving policy's
    `defaults.max_request_bytes`; the others are small and fixed."""

    login: int = 16 * KIB  # /dashboard/login: a form with the master key
    admin: int = 64 * KIB  # /admin/...: a key's settings
    policy: int = 2048 * KIB  # /dashboard/policy/...: policy text (itself capped at 256 KiB)
    other: int = 64 * KIB  # every other path takes no body to speak of

    def for_path(self, path: str, api_limit: int) -> int:
        if path.startswith("/v1/"):
            return api_limit
        if path.startswith("/dashboard/login"):
            return self.login
        if path.startswith("/admin/"):
            return self.admin
        if path.startswith("/dashboard/policy/"):
            return self.policy
        return self.other


_CLOSE = {"connection": "close"}  # the rest of the body is not read: do not reuse the socket


def too_large(limit: int) -> ApiError:
    return ApiError(
        413, f"Request body is larger than {limit} bytes", code="request_too_large", headers=_CLOSE
    )


class _LimitedBody:
    """One request's `receive`, counting and timing its body."""

    __slots__ = ("_deadline", "_declared", "_done", "_limit", "_read", "_receive", "_timeout_s")

    def __init__(self, receive: Receive, limit: int, declared: int | None, timeout_s: float):
        self._receive = receive
        self._limit = limit
        self._declared = declared
        self._timeout_s = timeout_s
        self._deadline: float | None = None
        self._read = 0
        self._done = False

    async def __call__(self) -> Message:
        if self._done:  # the body is in; what follows is waiting for a disconnect
            return await self._receive()
        if self._declared is not None and self._declared > self._limit:
            raise too_large(self._limit)
        if self._deadline is None:
            self._deadline = time.monotonic() + self._timeout_s
        try:
            # asyncio's timeout, not anyio's fail_after: the same deadline and TimeoutError
            # for a fraction of the cost (the gateway serves on asyncio only).
            async with asyncio.timeout(max(self._deadline - time.monotonic(), 0.0)):
                message = await self._receive()
        except TimeoutError:
            raise ApiError(
                408,
                f"The request body did not arrive within {self._timeout_s:g} s",
                code="request_timeout",
                headers=_CLOSE,
            ) from None
        if message["type"] != "http.request":
            self._done = True
            return message
        self._read += len(message.get("body", b""))
        if self._read > self._limit:
            raise too_large(self._limit)
        self._done = not message.get("more_body", False)
        return message


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


class RequestLimits:
    """ASGI middleware: body limits per path and the body read timeout."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        api_limit: Callable[[], int],
        body_timeout_s: float,
        limits: BodyLimits | None = None,
    ):
        self.app = app
        self.api_limit = api_limit
        self.body_timeout_s = body_timeout_s
        self.limits = limits or BodyLimits()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        limit = self.limits.for_path(path, self.api_limit() if path.startswith("/v1/") else 0)
        body = _LimitedBody(receive, limit, _content_length(scope), self.body_timeout_s)
        await self.app(scope, body, send)
