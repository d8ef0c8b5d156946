"""What every backend (vLLM pool, litellm remote) offers the gateway.

A backend serves one policy model. It takes the client's OpenAI request body, sends it upstream
under the model's upstream name, and gives back OpenAI-shaped JSON: a whole response, or a
stream of chunks exactly as OpenAI sends them with `stream_options.include_usage` on (the
gateway drops the final usage chunk when the client did not ask for it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

# The upstream call: chat or text completions, or embeddings (no tokens generated, no stream).
Kind = Literal["chat", "completions", "embeddings"]


@dataclass(slots=True)
class UpstreamCall:
    kind: Kind
    body: dict[str, Any]  # the client's body; the backend must not mutate it
    timeout_s: float  # one attempt, in all (a stream: until its first chunk)
    retries: int  # extra attempts on other endpoints, before any byte was streamed
    connect_timeout_s: float = 2.0
    # No byte this long: a vLLM endpoint is asked /health, and abandoned if it does not answer.
    first_byte_timeout_s: float | None = None
    # Sent upstream with the call: the trace context (traceparent) when tracing is on.
    headers: dict[str, str] | None = None


@dataclass(slots=True, frozen=True)
class CallLimits:
    """A model's timeouts and retries (see docs/policy.md), worked out once per policy load."""

    timeout_s: float
    retries: int
    connect_timeout_s: float = 2.0
    first_byte_timeout_s: float | None = None
    stream_timeout_s: float | None = None  # a whole stream; None: timeout_s
    stream_idle_timeout_s: float | None = None  # between two chunks; None: no limit

    def call(self, kind: Kind, body: dict[str, Any]) -> UpstreamCall:
        return UpstreamCall(
            kind, body, self.timeout_s, self.retries, self.connect_timeout_s,
            self.first_byte_timeout_s,
        )  # fmt: skip


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # False while the numbers are an estimate (e.g. a stream cut before the usage chunk).
    exact: bool = False
    # Set when the upstream reported usage no call can produce: what it said, and the bound
    # the numbers above were clamped to (gateway/backends/usage_bounds.py).
    anomaly: dict[str, Any] | None = None
    # Of prompt_tokens, those the upstream read from its prefix cache (vLLM's and OpenAI's
    # `prompt_tokens_details.cached_tokens`, Anthropic's cache reads): priced at the cached
    # input price. Never more than prompt_tokens.
    cached_tokens: int = 0


@dataclass(slots=True)
class Completion:
    body: dict[str, Any]  # OpenAI response JSON, `model` set to the policy model name
    usage: Usage
    endpoint: str  # which upstream answered (URL, or the litellm model string)
    provider_cost_usd: float | None = None  # the provider's own price, when it reports one
    failed: list[str] = field(default_factory=list)  # endpoints tried first that failed


class UpstreamStream(Protocol):
    """An open upstream stream; the first chunk has already arrived when it is handed out."""

    endpoint: str
    usage: Usage  # kept current as chunks arrive, exact once the usage chunk is seen
    provider_cost_usd: float | None

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]: ...

    async def aclose(self) -> None:
        """Stop reading and cancel the upstream request (the client went away)."""


@dataclass
class UpstreamError(Exception):
    """A failed upstream call. `status` is what the gateway answers if nothing else works."""

    status: int  # 502 bad gateway, 503 unavailable, 504 timeout, or the upstream's own 4xx
    message: str  # for the client: what failed, in words; never hosts, ports or reprs
    code: str = "upstream_error"
    # True when another endpoint or fallback model may succeed (connect error, timeout, 5xx);
    # False for the client's own mistakes (upstream 4xx), which no fallback can fix.
    retryable: bool = True
    param: str | None = None
    attempts: list[str] = field(default_factory=list)  # endpoints tried, for the request log
    # A call that was answered (200) but could not be used: what it is charged all the same.
    usage: Usage | None = None
    # For the request log and the gateway's own log only: the cause as the transport gave it.
    detail: str | None = None
    # When the client may try again (the 503's retry-after), where the backend knows.
    retry_after_s: float | None = None

    @property
    def logged(self) -> str:
        """The message with its detail: what the request log says."""
        return f"{self.message} ({self.detail})" if self.detail else self.message

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.logged}"


class Backend(Protocol):
    name: str  # the policy model name

    def healthy(self) -> bool:
        """At least one endpoint is believed to answer (for /readyz and choice)."""

    async def start(self) -> None:
        """Begin background work such as health checks."""

    async def aclose(self) -> None:
        """Stop background work. Does not close the shared HTTP client."""

    async def complete(self, call: UpstreamCall) -> Completion: ...

    async def open_stream(self, call: UpstreamCall) -> UpstreamStream: ...


@runtime_checkable
class ChatRendering(Protocol):
    """An optional capability of a backend: a chat rendered as the model's own prompt text.

    For callers that continue raw text through the completions API (EAD). VllmPool has it."""

    async def render_chat(
        self, messages: list[dict[str, Any]], timeout_s: float, retries: int
    ) -> str | None:
        """The prompt text, or None when the model has no chat template."""


# The gateway's own credentials or model names, not the client's request, are at fault here:
# another model may well answer, and the client must not see a confusing 401.
_GATEWAY_FAULTS = {401, 403, 404}


def http_error(
    status: int, message: str, code: str | None, param: str | None, endpoint: str
) -> UpstreamError:
    """The one rule for an upstream's HTTP error answer, shared by every backend."""
    if status >= 500 or status in _GATEWAY_FAULTS:
        if status in _GATEWAY_FAULTS:
            # The endpoint is in the request log (`attempts`); the client is not told it.
            message = f"the upstream refused the gateway ({status}): {message}"
        return UpstreamError(502, message, "upstream_error", True, None, [endpoint])
    if status == 429:
        return UpstreamError(429, message, code or "rate_limit_exceeded", True, param, [endpoint])
    # The client's own mistake: no other endpoint or model fixes it.
    return UpstreamError(status, message, code or "upstream_error", False, param, [endpoint])
