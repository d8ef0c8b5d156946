"""OpenAI-shaped errors: `{"error": {"message", "type", "param", "code"}}` with the right status."""

from __future__ import annotations

from collections.abc import Mapping

import orjson
from starlette.responses import Response

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}
# A 503 that names no better time: the gateway's own default health-check interval, after
# which a down endpoint may be found back.
RETRY_AFTER_503_S = 5


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = dict(headers or {})

    def body(self) -> bytes:
        kind = _TYPES.get(
            self.status, "api_error" if self.status >= 500 else "invalid_request_error"
        )
        return orjson.dumps(
            {
                "error": {
                    "message": self.message,
                    "type": kind,
                    "param": self.param,
                    "code": self.code,
                }
            }
        )

    def response(self, headers: Mapping[str, str] | None = None) -> Response:
        merged = {**self.headers, **(headers or {})}
        # Every 503 says when to come back (RFC 9110 §15.6.4); clients' retry logic reads it.
        if self.status == 503 and not any(k.lower() == "retry-after" for k in merged):
            merged["retry-after"] = str(RETRY_AFTER_503_S)
        return Response(
            self.body(), status_code=self.status, media_type="application/json", headers=merged
        )
