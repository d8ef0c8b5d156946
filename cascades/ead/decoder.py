"""The EAD loop for one request, and its tally of calls, tokens and switches per model."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from cascades.base import CascadeFailed, Step
from cascades.ead.entropy import RollingMean
from cascades.ead.prompts import plain_chat_prompt
from cascades.ead.switching import Piece, handover_at, piece_of, stop_at
from gateway.backends.base import Backend, CallLimits, ChatRendering, Kind, UpstreamError, Usage
from gateway.backends.openai_shapes import usage_dict
from policies.pricing import CostFn
from policies.schema import EadRoute

# The re-sent text is re-tokenized by the other model, so its token count is bounded by bytes
# (no tokenizer makes more tokens than UTF-8 bytes). The loop stops ("length") before the text
# passes this many bytes per budgeted token, which keeps `worst_case_usd` a true bound; real text
# runs 3-5 bytes a token, so only pathological output ever meets the cap.
BYTES_PER_TOKEN = 8
# The client's sampling parameters that every call carries (`seed` is handled apart).
_SAMPLING = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "frequency_penalty",
    "presence_penalty",
    "repetition_penalty",
    "stop",
)


class EadPlan(Protocol):
    """What the loop reads of its cascade (EadCascade)."""

    route_name: str
    config: EadRoute
    small: str
    large: str
    prices: Mapping[str, CostFn]
    timeout_s: float
    retries: int
    limits: CallLimits

    def models(self) -> list[str]: ...

    def max_tokens_of(self, body: dict[str, Any]) -> int: ...

    def call_bounds(self, max_tokens: int) -> tuple[int, int]: ...


@dataclass(slots=True)
class _ModelTally:
    usage: Usage = field(default_factory=lambda: Usage(exact=True))
    endpoints: list[str] = field(default_factory=list)
    calls: int = 0
    kept: int = 0  # tokens of this model in the answer
    call_ms: float = 0.0
    generated: int = 0  # tokens generated, kept or not


class Decoder:
    """The EAD loop for one request. `pieces()` yields answer text as it becomes final."""

    def __init__(
        self, cascade: EadPlan, kind: Kind, body: dict[str, Any], backends: Mapping[str, Backend]
    ):
        self.c = cascade
        self.kind = kind
        self.body = body
        self.backends = backends
        self.budget = cascade.max_tokens_of(body)
        stop = body.get("stop")
        self.stops: list[str] = [s for s in ([stop] if isinstance(stop, str) else stop or []) if s]
        self.sampling = {k: body[k] for k in _SAMPLING if body.get(k) is not None}
        self.seed: int | None = body.get("seed")
        self.text = ""
        self.finish = "length"
        self.tally = {m: _ModelTally() for m in cascade.models()}
        self.switches = 0
        # Per switch: (ms the large model held control, small tokens dropped, large tokens kept).
        self._switch_raw: list[tuple[float, int, int]] = []
        self._prompts: dict[str, tuple[str, bool]] = {}  # model -> (prompt, add BOS): per request
        self._calls = 0

    # -- the loop --------------------------------------------------------------------------
    async def pieces(self) -> AsyncGenerator[str, None]:
        c = self.c
        small_calls, large_calls = c.call_bounds(self.budget)
        window = RollingMean(c.config.window)
        on_large, phase_t0, dropped, phase_tokens = False, 0.0, 0, 0
        emitted, kept, cap = 0, 0, BYTES_PER_TOKEN * self.budget
        hold = max((len(s) for s in self.stops), default=1) - 1
        done = False
        while not done and kept < self.budget:
            model = c.large if on_large else c.small
            # Guards that keep worst_case_usd true whatever the upstream does.
            over_calls = self.tally[model].calls >= (large_calls if on_large else small_calls)
            if over_calls or len(self.text.encode()) > cap:
                break
            size = min(c.config.span if on_large else c.config.chunk, self.budget - kept)
            piece = await self._call(model, size)
            cut: int | None = None
            if on_large:
                for h in piece.entropies:
                    window.push(h)
            else:
                cut = handover_at(piece, window, c.config.threshold, self.stops, self.text)
            if cut is not None:  # hand over to the large model at token `cut`
                self.text += piece.text[: piece.offsets[cut]]
                self.tally[model].kept += cut
                kept += cut
                self.switches += 1
                on_large, phase_t0, phase_tokens = True, time.perf_counter(), 0
                dropped = len(piece.entropies) - cut
                window.clear()
            else:
                start = len(self.text)
                self.text += piece.text
                n = len(piece.entropies)
                self.tally[model].kept += n
                kept += n
                done = self._ended(piece, size, start)
                if on_large:
                    phase_tokens += n
                    if done or window.mean() < c.config.threshold:
                        self._switch_raw.append(
                            ((time.perf_counter() - phase_t0) * 1000, dropped, phase_tokens)
                        )
                        on_large = False
                        window.clear()
            safe = len(self.text) if done else len(self.text) - hold
            if safe > emitted:
                yield self.text[emitted:safe]
                emitted = safe
        if on_large:  # the budget ran out with the large model in control
            self._switch_raw.append(
                ((time.perf_counter() - phase_t0) * 1000, dropped, phase_tokens)
            )
        if len(self.text) > emitted:
            yield self.text[emitted:]

    def _ended(self, piece: Piece, asked: int, start: int) -> bool:
        """Whether the answer is complete after this call's text was appended at `start`."""
        at = stop_at(self.stops, self.text, start)
        if at is not None:
            self.text = self.text[:at]
            self.finish = "stop"
            return True
        if piece.finish == "stop":  # EOS or a stop sequence inside the call
            self.finish = "stop"
            return True
        # Fewer tokens than asked without a stop: the context is full.
        return len(piece.entropies) < asked

    async def _prompt(self, model: str) -> tuple[str, bool]:
        """(prompt, whether the server should add BOS), rendered once per model per request."""
        if model not in self._prompts:
            if self.kind == "completions":
                self._prompts[model] = (str(self.body.get("prompt") or ""), True)
            else:
                messages = self.body.get("messages") or []
                backend = self.backends[model]
                rendered = None
                if isinstance(backend, ChatRendering):
                    try:
                        rendered = await backend.render_chat(
                            messages, self.c.timeout_s, self.c.retries
                        )
                    except UpstreamError as err:
                        raise CascadeFailed(err, model, self.steps()) from None
                # A rendered template starts with its own BOS; the plain one needs the server's.
                self._prompts[model] = (
                    (rendered, False)
                    if rendered is not None
                    else (plain_chat_prompt(messages), True)
                )
        return self._prompts[model]

    async def _call(self, model: str, max_tokens: int) -> Piece:
        prompt, add_bos = await self._prompt(model)
        payload: dict[str, Any] = {
            "model": model,
            "prompt": prompt + self.text,
            "max_tokens": max_tokens,
            "logprobs": self.c.config.top_k,
            **self.sampling,
        }
        if not add_bos:
            payload["add_special_tokens"] = False
        if self.seed is not None:  # a fresh, reproducible draw for each call
            payload["seed"] = self.seed + self._calls
        self._calls += 1
        t0 = time.perf_counter()
        try:
            done = await self.backends[model].complete(self.c.limits.call("completions", payload))
        except UpstreamError as err:
            if err.usage is not None:  # answered, but no answer: paid for all the same
                self._count(model, err.usage, ",".join(err.attempts))
            raise CascadeFailed(err, model, self.steps()) from None
        tally = self.tally[model]
        tally.call_ms += (time.perf_counter() - t0) * 1000
        self._count(model, done.usage, done.endpoint)
        try:
            piece = piece_of(done.body)
        except (KeyError, IndexError, TypeError, ValueError) as exc:  # paid for, yet unreadable
            err = UpstreamError(502, f"{model} answered a malformed completion", detail=repr(exc))
            err.attempts = [done.endpoint]
            raise CascadeFailed(err, model, self.steps()) from None
        tally.generated += len(piece.entropies)
        return piece

    def _count(self, model: str, usage: Usage, endpoint: str) -> None:
        tally = self.tally[model]
        tally.calls += 1
        tally.usage.prompt_tokens += usage.prompt_tokens
        tally.usage.completion_tokens += usage.completion_tokens
        tally.usage.cached_tokens += usage.cached_tokens
        tally.usage.exact = tally.usage.exact and usage.exact
        # The backend clamped each call to its own bound; the first impossible report is kept.
        tally.usage.anomaly = tally.usage.anomaly or usage.anomaly
        if endpoint not in tally.endpoints:
            tally.endpoints.append(endpoint)

    # -- results ---------------------------------------------------------------------------
    def steps(self) -> list[Step]:
        return [
            Step(
                m,
                Usage(
                    t.usage.prompt_tokens,
                    t.usage.completion_tokens,
                    t.usage.exact,
                    t.usage.anomaly,
                    t.usage.cached_tokens,
                ),
                ",".join(t.endpoints),
                None,
                {"calls": t.calls, "tokens": t.kept},
            )
            for m, t in self.tally.items()
            if t.calls
        ]

    def usage(self) -> dict[str, Any]:
        models = {
            m: {
                "prompt_tokens": t.usage.prompt_tokens,
                "completion_tokens": t.usage.completion_tokens,
            }
            for m, t in self.tally.items()
        }
        prompt = sum(u["prompt_tokens"] for u in models.values())
        completion = sum(u["completion_tokens"] for u in models.values())
        return usage_dict(prompt, completion, models=models)

    def detail(self) -> dict[str, Any]:
        small, large = self.tally[self.c.small], self.tally[self.c.large]
        total = small.kept + large.kept
        # A switch's added latency: the time the large model held control, less what the small
        # model would have taken for those tokens, plus the small tokens thrown away, both at
        # this request's own small-model ms per token.
        per_token = small.call_ms / small.generated if small.generated else 0.0
        added = [ms - per_token * (tokens - dropped) for ms, dropped, tokens in self._switch_raw]
        cost = sum(
            self.c.prices[m](t.usage.prompt_tokens, t.usage.completion_tokens, None)
            for m, t in self.tally.items()
            if m in self.c.prices
        )
        return {
            "switches": self.switches,
            "large_token_share": large.kept / total if total else 0.0,
            "calls": {m: t.calls for m, t in self.tally.items()},
            "tokens": {m: t.kept for m, t in self.tally.items()},
            "switch_latency_ms": [round(ms, 3) for ms in added],
            "small_ms_per_token": round(per_token, 4),
            "finish_reason": self.finish,
            "cost_usd": cost,
        }
