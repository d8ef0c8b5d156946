"""Anthropic-shaped errors: `{"type": "error", "error": {"type", "message"}}`, with
Anthropic's error types for each status."""

from __future__ import annotations

from collections.abc import Mapping

import orjson
from starlette.responses import Response

from gateway.errors import ApiError

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_type(status: int) -> str:
    return _TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def error_body(err: ApiError) -> bytes:
    return orjson.dumps(
        {"type": "error", "error": {"type": error_type(err.status), "message": err.message}}
    )


def error_response(err: ApiError, headers: Mapping[str, str] | None = None) -> Response:
    return Response(
        error_body(err),
        status_code=err.status,
        media_type="application/json",
        headers={**err.headers, **(headers or {})},
    )
