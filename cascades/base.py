"""What a multi-model cascade (confidence escalation, EAD) gives the pipeline.

A cascade may call several models for one request. Each call is a `Step`; the client pays for
every step, and the request log lists them. A cascade that fails part-way still reports the
steps it paid for (`CascadeFailed.steps`), so no spend goes uncounted.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.backends.base import Backend, Kind, UpstreamError, Usage
from policies.pricing import CostFn


@dataclass(slots=True)
class Step:
    model: str
    usage: Usage
    endpoint: str
    provider_cost_usd: float | None = None
    # What this step decided, for the log: {"confidence": -0.42, "escalate": True}, ...
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class CascadeResult:
    body: dict[str, Any]  # the OpenAI response the client gets
    model: str  # the model whose answer it is (for EAD: the small model's name + "+" + large)
    steps: list[Step]
    detail: dict[str, Any] = field(default_factory=dict)  # e.g. {"escalations": 1}


class CascadeStream(Protocol):
    """An open cascade stream: OpenAI chunks, the final usage chunk included (summed usage).

    `steps` and `detail` are complete once iteration ends (or after `aclose`)."""

    model: str
    steps: list[Step]
    detail: dict[str, Any]

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]: ...

    async def aclose(self) -> None: ...


class CascadeFailed(Exception):
    """A step failed and no later model could answer; `steps` were paid for all the same."""

    def __init__(self, error: UpstreamError, model: str, steps: list[Step]):
        super().__init__(str(error))
        self.error = error
        self.model = model
        self.steps = steps


class Cascade(Protocol):
    def models(self) -> list[str]:
        """Every model one request may call (a judge included)."""

    def worst_case_usd(
        self, prompt_tokens: int, max_tokens: int, prices: Mapping[str, CostFn]
    ) -> float:
        """The most one request can cost, for the hard budget's reservation."""

    async def complete(
        self, kind: Kind, body: dict[str, Any], backends: Mapping[str, Backend]
    ) -> CascadeResult: ...

    async def open_stream(
        self, kind: Kind, body: dict[str, Any], backends: Mapping[str, Backend]
    ) -> CascadeStream: ...
