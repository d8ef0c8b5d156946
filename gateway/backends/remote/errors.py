"""litellm's exceptions (which wrap the OpenAI SDK's, which wrap httpx's) as UpstreamErrors."""

from __future__ import annotations

import logging
from typing import Any

import httpx

from gateway.backends.base import UpstreamError, http_error

log = logging.getLogger("routegate.remote")


def _causes(exc: BaseException) -> list[BaseException]:
    """The exception and what it wraps (litellm wraps the OpenAI SDK, which wraps httpx)."""
    out: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and len(out) < 12 and all(cur is not seen for seen in out):
        out.append(cur)
        original = getattr(cur, "original_exception", None)
        cur = cur.__cause__ or (
            original if isinstance(original, BaseException) else cur.__context__
        )
    return out


def _is_timeout(e: BaseException) -> bool:
    import openai

    return isinstance(e, TimeoutError | httpx.TimeoutException | openai.APITimeoutError)


def _is_connect_error(e: BaseException) -> bool:
    import openai

    if isinstance(e, httpx.TransportError | ConnectionError):
        return True
    # litellm's own APIConnectionError subclasses the SDK's but also wraps unrelated failures.
    return isinstance(e, openai.APIConnectionError) and not type(e).__module__.startswith("litellm")


def _error_body(chain: list[BaseException]) -> dict[str, Any]:
    """The upstream's `{"message", "code", "param"}`, if an exception in the chain carries it."""
    for e in chain:
        body = getattr(e, "body", None)
        if isinstance(body, dict):
            inner = body.get("error", body)
            if isinstance(inner, dict):
                return inner
    return {}


def to_upstream_error(exc: Exception, name: str, endpoint: str) -> UpstreamError:
    if isinstance(exc, UpstreamError):
        return exc
    chain = _causes(exc)
    # The endpoint and the transport's words go to the request log (`detail`), not the client.
    if any(_is_timeout(e) for e in chain):
        return UpstreamError(504, f"{name} timed out", "upstream_timeout", detail=endpoint)
    if any(_is_connect_error(e) for e in chain):
        cause = next((str(e) for e in reversed(chain) if str(e)), type(exc).__name__)
        return UpstreamError(
            503,
            f"model '{name}': could not connect to its endpoint(s)",
            "upstream_unavailable",
            detail=f"{endpoint} unreachable: {cause}",
        )
    status = getattr(exc, "status_code", None)
    body = _error_body(chain)
    message = str(body.get("message") or getattr(exc, "message", None) or exc)
    param = body.get("param") if isinstance(body.get("param"), str) else None
    if status == 408:  # a timeout reported without a timeout exception underneath
        return UpstreamError(504, f"{name} timed out", "upstream_timeout", detail=endpoint)
    if not isinstance(status, int) or not 400 <= status < 500:
        if not isinstance(status, int) or status < 400:  # not an HTTP answer: log the why
            log.warning("%s: unexpected litellm failure", name, exc_info=exc)
            # No answer came: the message is litellm's own account, with whatever it names.
            return UpstreamError(
                502, f"model '{name}' failed", "upstream_error", detail=f"{endpoint}: {message}"
            )
        return UpstreamError(502, f"{name} failed: {message}", "upstream_error", detail=endpoint)
    code = body.get("code") or body.get("type")
    return http_error(status, message, str(code) if code else None, param, endpoint)


def answered_unreadable(exc: BaseException) -> bool:
    """litellm refused a 200 answer's shape (no choices, usage that is no number): the call
    was made and may be billed, unlike a failed one."""
    from pydantic import ValidationError

    return any(
        isinstance(e, ValidationError) or "provider returned" in str(e) for e in _causes(exc)
    )
