"""The plainest cascade: try each model in order until one answers.

A model is given up on only for failures another model may not have (unreachable, timeout, 5xx,
rate limited). A client mistake (upstream 4xx) ends the chain at once. Streams fall back only
before their first byte: a backend hands out a stream that has already started.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from cascades.base import Step
from gateway.backends.base import Backend, UpstreamCall, UpstreamError

T = TypeVar("T")


@dataclass(slots=True)
class Attempt:
    model: str
    call: UpstreamCall


@dataclass
class Outcome(Generic[T]):
    model: str
    result: T
    fallbacks: list[str] = field(default_factory=list)  # models that failed first, in order
    # Failed calls that were answered all the same (a 200 that was no answer): paid for.
    charged: list[Step] = field(default_factory=list)


class ChainFailed(Exception):
    def __init__(
        self,
        error: UpstreamError,
        model: str,
        fallbacks: list[str],
        charged: list[Step] | None = None,
    ):
        super().__init__(str(error))
        self.error = error
        self.model = model
        self.fallbacks = fallbacks
        self.charged = charged or []


def charged_step(model: str, err: UpstreamError) -> Step | None:
    """The Step to pay for a failed call that was answered, or None when nothing was."""
    if err.usage is None:
        return None
    return Step(model, err.usage, ",".join(err.attempts), None, {"error": str(err)})


async def first_success(
    attempts: list[Attempt],
    backends: Mapping[str, Backend],
    send: Callable[[Backend, UpstreamCall], Awaitable[T]],
) -> Outcome[T]:
    """`send` is the backend call to make, e.g. `lambda b, c: b.complete(c)`."""
    failed: list[str] = []
    charged: list[Step] = []
    for i, attempt in enumerate(attempts):
        try:
            result = await send(backends[attempt.model], attempt.call)
            return Outcome(attempt.model, result, failed, charged)
        except UpstreamError as err:
            if (step := charged_step(attempt.model, err)) is not None:
                charged.append(step)
            if not err.retryable or i == len(attempts) - 1:
                raise ChainFailed(err, attempt.model, failed, charged) from None
            failed.append(attempt.model)
    raise ValueError("no models to try")
