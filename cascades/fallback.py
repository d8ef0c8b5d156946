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
    """`send` is the backend call to make, e.g. `lambda b, c: b.complete(c)`.

    A model with no usable endpoint (down, ejected) goes after those that have one, as a last
    resort: a frozen or dead model must not cost every request its timeout before the fallback
    that would answer. It counts among the fallbacks when another model answers."""
    healthy = [backends[a.model].healthy() for a in attempts]
    ready = [a for a, ok in zip(attempts, healthy, strict=True) if ok]
    skipped = [a for a, ok in zip(attempts, healthy, strict=True) if not ok]
    failed: list[str] = []
    ordered = ready + skipped
    charged: list[Step] = []
    for i, attempt in enumerate(ordered):
        try:
            result = await send(backends[attempt.model], attempt.call)
            passed = [a.model for a in skipped if a.model not in failed and a is not attempt]
            return Outcome(attempt.model, result, failed + passed, charged)
        except UpstreamError as err:
            if (step := charged_step(attempt.model, err)) is not None:
                charged.append(step)
            if not err.retryable or i == len(ordered) - 1:
                raise ChainFailed(err, attempt.model, failed, charged) from None
            failed.append(attempt.model)
    raise ValueError("no models to try")
