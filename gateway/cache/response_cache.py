"""The exact-match response cache of a route (see docs/cache.md).

A request is keyed by a sha256 of its normalised form (route, kind, scope, and every field that
can change the answer, as canonical JSON), so key order and formatting never split a key and one
tenant never reads another's answer unless the policy shares the scope. Entries live in the
state store (`State.cache_get` / `cache_put`), which counts hits and evicts by the policy.

Only whole answers are stored: a streamed answer is assembled first (`body_from_chunks`), and a
cached answer is replayed to a streaming client as chunks (`chunks_from_body`).
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from gateway.backends import openai_shapes as shapes
from gateway.state.base import State
from policies.schema import CacheConfig

Kind = Literal["chat", "completions", "embeddings"]

# Transport and attribution only: they never change the answer.
IGNORED_FIELDS = frozenset({"stream", "stream_options", "user", "model"})
# OpenAI's defaults, filled in so that an omitted field and its default give one key.
DEFAULTS: dict[str, float] = {
    "temperature": 1.0,
    "top_p": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
}
ANONYMOUS = "anonymous"


@dataclass(slots=True)
class CachedAnswer:
    body: dict[str, Any]
    model: str  # the model whose answer it is
    cost_usd: float  # what it cost when it was computed (a hit costs 0)
    created_at: float


def scope_id(config: CacheConfig, api_key_id: str | None, team: str | None) -> str:
    """Who shares cached answers: the key id, the team, or everyone ("*"). An open gateway
    (no keys) has one anonymous tenant."""
    if config.scope == "global":
        return "*"
    if config.scope == "team":
        return team or ANONYMOUS
    return api_key_id or ANONYMOUS


def _normalised(body: dict[str, Any]) -> dict[str, Any] | None:
    """The fields that decide the answer, defaults filled in; None if it must not be cached."""
    fields = {k: v for k, v in body.items() if k not in IGNORED_FIELDS}
    for name, default in DEFAULTS.items():
        value = fields.get(name, default)
        if value is None:
            value = default
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None  # not a number: let the upstream reject it, never cache it
        fields[name] = float(value)  # 0 and 0.0 are one key
    n = fields.get("n", 1)
    if n is not None and n != 1:
        return None  # several samples are random by design
    fields.pop("n", None)
    return fields


class ResponseCache:
    """One route's cache, under the state namespace `route`."""

    def __init__(self, state: State, route: str, config: CacheConfig) -> None:
        self.state = state
        self.route = route
        self.config = config

    def key_for(self, kind: Kind, body: dict[str, Any], scope_id: str) -> str | None:
        """The cache key of a request, or None when it must not be cached: n > 1, or sampled
        (temperature > 0, and a missing temperature is OpenAI's 1) unless `cache_sampled`."""
        if kind == "embeddings":
            # Not sampled: the same input, format and size always give the same vectors.
            fields = {k: v for k, v in body.items() if k not in IGNORED_FIELDS}
            fields["encoding_format"] = fields.get("encoding_format") or "float"
        else:
            fields = _normalised(body)
            if fields is None:
                return None
            if fields["temperature"] > 0 and not self.config.cache_sampled:
                return None
        identity = {
            "route": self.route,
            "kind": kind,
            "scope": [self.config.scope, scope_id],
            "request": fields,
        }
        canonical = orjson.dumps(identity, option=orjson.OPT_SORT_KEYS)
        return hashlib.sha256(canonical).hexdigest()

    async def get(self, key: str, now: float) -> CachedAnswer | None:
        entry = await self.state.cache_get(self.route, key, now)
        if entry is None:
            return None
        stored = orjson.loads(entry.value)
        return CachedAnswer(
            body=stored["body"],
            model=str(stored["model"]),
            cost_usd=float(stored["cost_usd"]),
            created_at=entry.created_at,
        )

    async def put(
        self, key: str, body: dict[str, Any], model: str, cost_usd: float, now: float
    ) -> list[str]:
        """Store an answer; `cost_usd` (what this miss cost with the model the router picked)
        is the eviction weight. Returns the evicted keys."""
        value = orjson.dumps({"body": body, "model": model, "cost_usd": cost_usd})
        return await self.state.cache_put(
            self.route,
            key,
            value,
            cost_usd,
            self.config.eviction,
            self.config.max_bytes,
            self.config.ttl_s,
            now,
        )


# -- stream <-> whole answer -------------------------------------------------------------------


def _chunk_base(kind: Kind, body: dict[str, Any]) -> dict[str, Any]:
    fingerprint = {k: body[k] for k in ("system_fingerprint",) if k in body}
    return shapes.header(
        body.get("id"), shapes.chunk_object(kind), body.get("created"), body.get("model"),
        **fingerprint,
    )  # fmt: skip


def _chat_choice_chunks(choice: dict[str, Any]) -> list[dict[str, Any]]:
    """A chat choice as three stream choices: the role, the content, the finish reason."""
    index = choice.get("index", 0)
    delta: dict[str, Any] = dict(choice.get("message") or {})  # content, tool_calls, ...
    role = delta.pop("role", "assistant")
    if delta.get("tool_calls"):
        delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(delta["tool_calls"])]
    return [
        shapes.delta_choice(index, {"role": role, "content": ""}, None, with_logprobs=False),
        shapes.delta_choice(index, delta, None, choice.get("logprobs")),
        shapes.delta_choice(index, {}, choice.get("finish_reason"), with_logprobs=False),
    ]


def chunks_from_body(kind: Kind, body: dict[str, Any]) -> list[dict[str, Any]]:
    """A stored (non-streaming) answer as the OpenAI stream a streaming client expects, ending
    with the usage chunk (empty choices), as with `stream_options.include_usage`."""
    base = _chunk_base(kind, body)
    chunks: list[dict[str, Any]] = []
    for choice in body.get("choices") or []:
        # A text choice (text, index, logprobs, finish_reason) is already chunk-shaped.
        parts = _chat_choice_chunks(choice) if kind == "chat" else [dict(choice)]
        chunks.extend(shapes.with_choices(base, [part]) for part in parts)
    if body.get("usage") is not None:
        chunks.append(shapes.with_choices(base, [], usage=body["usage"]))
    return chunks


# Sent whole, never in pieces: a repeat replaces (litellm repeats a tool call's `type` on
# every delta), where streamed strings (content, text, arguments) concatenate.
_WHOLE_FIELDS = frozenset({"id", "type", "name", "finish_reason"})


def _merge_field(into: dict[str, Any], name: str, value: Any) -> None:
    """Stream deltas add up: strings concatenate, lists extend, other values (and the fields
    sent whole) replace (a None never overwrites a value)."""
    old = into.get(name)
    if isinstance(value, str | list) and type(old) is type(value) and name not in _WHOLE_FIELDS:
        into[name] = old + value
    elif isinstance(value, dict) and isinstance(old, dict):
        for key, item in value.items():
            _merge_field(old, key, item)
    elif value is not None or name not in into:
        into[name] = copy.deepcopy(value)  # later deltas merge into it: never the chunk's own


def _merge_tool_calls(calls: dict[int, dict[str, Any]], deltas: list[dict[str, Any]]) -> None:
    for delta in deltas:
        call = calls.setdefault(int(delta.get("index", 0)), {})
        for name, value in delta.items():
            if name != "index":
                _merge_field(call, name, value)


def _chat_choice(parts: list[dict[str, Any]]) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": None}
    calls: dict[int, dict[str, Any]] = {}
    choice: dict[str, Any] = {"index": parts[0].get("index", 0)}
    for part in parts:
        delta = dict(part.get("delta") or {})
        message["role"] = delta.pop("role", None) or message["role"]  # sent once, not pieces
        _merge_tool_calls(calls, delta.pop("tool_calls", None) or [])
        if delta.get("content") == "" and message["content"] is None:
            delta.pop("content")  # the opening "" of a stream is no content yet
        for name, value in delta.items():
            _merge_field(message, name, value)
        for name, value in part.items():
            if name not in ("index", "delta"):
                _merge_field(choice, name, value)
    if calls:
        message["tool_calls"] = [calls[i] for i in sorted(calls)]
    choice["message"] = message
    return choice


def _text_choice(parts: list[dict[str, Any]]) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": parts[0].get("index", 0), "text": ""}
    for part in parts:
        for name, value in part.items():
            if name != "index":
                _merge_field(choice, name, value)
    return choice


def body_from_chunks(kind: Kind, chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """A finished stream as the non-streaming response it stands for (to store it)."""
    body: dict[str, Any] = {}
    by_index: dict[int, list[dict[str, Any]]] = {}
    usage: Any = None
    for chunk in chunks:
        for name in ("id", "created", "model", "system_fingerprint"):
            if chunk.get(name) is not None and name not in body:
                body[name] = chunk[name]
        for part in chunk.get("choices") or []:
            by_index.setdefault(int(part.get("index", 0)), []).append(part)
        if chunk.get("usage") is not None:
            usage = chunk["usage"]
    body["object"] = shapes.response_object(kind)
    assemble = _chat_choice if kind == "chat" else _text_choice
    body["choices"] = [assemble(by_index[i]) for i in sorted(by_index)]
    if usage is not None:
        body["usage"] = usage
    return body
