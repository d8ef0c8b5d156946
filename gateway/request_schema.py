"""Checks of the client's request body. The raw dict is what goes upstream; these models only
reject what is wrong, naming the field, before any model is called."""

from __future__ import annotations

from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.errors import ApiError


class _Open(BaseModel):
    # Unknown fields pass through to the upstream untouched (tools, response_format, ...).
    model_config = ConfigDict(extra="allow")


class StreamOptions(_Open):
    include_usage: bool | None = None


class Message(_Open):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[Any] | None = None


class _Common(_Open):
    model: str = Field(min_length=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, gt=0)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: Literal[1] | None = None
    stop: str | list[str] | None = None


class ChatRequest(_Common):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, gt=0)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)


class CompletionRequest(_Common):
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = Field(default=None, ge=0, le=20)


_SCHEMAS: dict[str, type[_Common]] = {"chat": ChatRequest, "completions": CompletionRequest}


def _param(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def parse_request(raw: bytes, kind: str) -> dict[str, Any]:
    """The body as a dict, or ApiError 400 naming the first bad field."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"Request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "Request body must be a JSON object", code="invalid_json")
    try:
        _SCHEMAS[kind].model_validate(body)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        # Drop union tags pydantic adds ("str", "list[...]") so the param is a real field path.
        loc = tuple(
            p for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p in {"str", "int"}))
        )
        param = _param(loc)
        raise ApiError(
            400, f"Invalid field '{param}': {err['msg']}", code="invalid_value", param=param
        ) from None
    return body
