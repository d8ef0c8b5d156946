"""litellm's response objects as OpenAI's JSON, trimmed of litellm-only empty fields."""

from __future__ import annotations

from typing import Any

from gateway.backends.base import Kind, Usage
from gateway.backends.usage_bounds import read_usage
from gateway.tokens import CallBound


def drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [drop_none(v) for v in value]
    return value


def dump(obj: Any) -> dict[str, Any]:
    data = obj if isinstance(obj, dict) else obj.model_dump(mode="json", warnings=False)
    # Private fields (`_hidden_params`...) and litellm-only extras left empty.
    return {
        k: v
        for k, v in data.items()
        if not k.startswith("_")
        and v is not None
        and not (k == "provider_specific_fields" and not v)
    }


def shape_body(kind: Kind, data: dict[str, Any]) -> dict[str, Any]:
    for choice in data.get("choices") or []:
        if kind == "chat":
            msg = choice.get("message")
            if isinstance(msg, dict):
                extra = msg.pop("provider_specific_fields", None) or {}
                if extra.get("refusal") is not None:
                    msg["refusal"] = extra["refusal"]
                # OpenAI always sends `content` (null with tool calls); other nulls are noise.
                choice["message"] = {
                    k: v for k, v in msg.items() if v is not None or k == "content"
                }
        if not choice.get("provider_specific_fields"):
            choice.pop("provider_specific_fields", None)
        choice.setdefault("logprobs", None)
    if data.get("usage") is not None:
        data["usage"] = drop_none(data["usage"])
    return data


def usage_of(usage: Any, bound: CallBound) -> Usage | None:
    """The reported usage clamped to the call's bound; None when there is none (litellm fills
    zeros in for a provider that sent no usage)."""
    if not isinstance(usage, dict):
        return None
    if not usage.get("prompt_tokens") and not usage.get("completion_tokens"):
        return None
    return read_usage(usage, bound)
