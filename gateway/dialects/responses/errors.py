"""Responses errors are OpenAI's: the ApiError's own shape and status."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.responses import Response

from gateway.errors import ApiError


def error_response(err: ApiError, headers: Mapping[str, str] | None = None) -> Response:
    return err.response(headers)
