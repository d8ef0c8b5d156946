"""The one place that builds OpenAI's response and chunk objects.

`chat.completion`, `chat.completion.chunk` and `text_completion` objects, their choices and the
`usage` object, as the backends, the EAD cascade and the response cache send them, and the
vectors of an embeddings answer in the encoding asked for. Key order is part of the shape:
clients and tests compare the JSON as sent.
"""

from __future__ import annotations

import array
import base64
import sys
import uuid
from typing import Any

from gateway.backends.base import Kind, Usage


def response_object(kind: Kind) -> str:
    """The `object` of a whole answer."""
    return "chat.completion" if kind == "chat" else "text_completion"


def chunk_object(kind: Kind) -> str:
    """The `object` of a stream chunk (OpenAI's text completions stream `text_completion`)."""
    return "chat.completion.chunk" if kind == "chat" else "text_completion"


def new_id(kind: Kind, tag: str) -> str:
    """A fresh response id in OpenAI's style, `tag` naming who made the answer."""
    return f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{tag}-{uuid.uuid4().hex}"


def header(response_id: Any, obj: Any, created: Any, model: Any, **extra: Any) -> dict[str, Any]:
    """The fields before `choices`: id, object, created, model, then `extra` in order."""
    return {"id": response_id, "object": obj, "created": created, "model": model, **extra}


def with_choices(
    head: dict[str, Any], choices: list[dict[str, Any]], **tail: Any
) -> dict[str, Any]:
    """A response or chunk: `head`'s fields, `choices`, then `tail` (usage, fingerprint)."""
    return {**head, "choices": choices, **tail}


def text_choice(index: int, text: str, logprobs: Any, finish_reason: str | None) -> dict[str, Any]:
    """A text completion choice, whole or streamed (both have this shape)."""
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}


def message_choice(
    index: int, message: dict[str, Any], logprobs: Any, finish_reason: str | None
) -> dict[str, Any]:
    """A whole chat answer's choice."""
    return {
        "index": index,
        "message": message,
        "logprobs": logprobs,
        "finish_reason": finish_reason,
    }


def delta_choice(
    index: int,
    delta: dict[str, Any],
    finish_reason: str | None,
    logprobs: Any = None,
    *,
    with_logprobs: bool = True,
) -> dict[str, Any]:
    """A streamed chat choice; `with_logprobs=False` leaves the key out (a replayed answer's
    role and finish chunks never had one)."""
    choice: dict[str, Any] = {"index": index, "delta": delta}
    if with_logprobs:
        choice["logprobs"] = logprobs
    choice["finish_reason"] = finish_reason
    return choice


def usage_dict(prompt_tokens: int, completion_tokens: int, **extra: Any) -> dict[str, Any]:
    """OpenAI's `usage` object; `extra` (EAD's per-model split) follows the three counts."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        **extra,
    }


def usage_object(usage: Usage) -> dict[str, Any]:
    """OpenAI's `usage` for what is charged: it replaces an anomalous report in the answer."""
    if usage.cached_tokens:
        details = {"cached_tokens": usage.cached_tokens}
        return usage_dict(
            usage.prompt_tokens, usage.completion_tokens, prompt_tokens_details=details
        )
    return usage_dict(usage.prompt_tokens, usage.completion_tokens)


def embedding_usage(prompt_tokens: int) -> dict[str, Any]:
    """OpenAI's `usage` of an embeddings answer (it has no completion tokens)."""
    return {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}


def _to_base64(vector: list[float]) -> str:
    floats = array.array("f", vector)  # OpenAI's base64: float32, little-endian
    if sys.byteorder == "big":
        floats.byteswap()
    return base64.b64encode(floats.tobytes()).decode("ascii")


def _from_base64(text: str) -> list[float]:
    floats = array.array("f", base64.b64decode(text))
    if sys.byteorder == "big":
        floats.byteswap()
    return floats.tolist()


def embeddings_as(body: dict[str, Any], encoding_format: Any) -> dict[str, Any]:
    """An embeddings answer with each vector as the client asked: a list of floats (the
    default) or base64 of float32s, whichever the upstream sent (in place, and returned)."""
    want_base64 = encoding_format == "base64"
    for item in body.get("data") or []:
        vector = item.get("embedding")
        if want_base64 and isinstance(vector, list):
            item["embedding"] = _to_base64(vector)
        elif not want_base64 and isinstance(vector, str):
            item["embedding"] = _from_base64(vector)
    return body
