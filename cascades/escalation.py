"""Response-level cascade: ask models from cheap to strong until one answers confidently.

Every model but the last is asked with logprobs; its answer's confidence (cascades/confidence.py
or a judge model, cascades/judge.py) decides whether the next model is asked. Streams hold the
first `stream_hold_tokens` tokens, score them, then either stream on or drop the answer and
ask the next model. Each call is a Step the client pays for. A model that fails in a way another
may not (unreachable, timeout, 5xx) is passed over like a fallback.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Mapping
from typing import Any

from cascades.base import CascadeFailed, CascadeResult, Step
from cascades.confidence import (
    TokenLogprobs,
    logprob_request,
    read_logprobs,
    score,
    should_escalate,
)
from cascades.judge import ask_judge, judge_prompt_bound, p_yes
from gateway.backends.base import (
    Backend,
    CallLimits,
    Completion,
    Kind,
    UpstreamCall,
    UpstreamError,
    UpstreamStream,
    Usage,
)
from policies.pricing import CostFn
from policies.schema import CascadeRoute


def _calls_text(calls: Any) -> str:
    """Tool calls (whole or stream deltas) as text: a call is an answer, never empty text."""
    out = []
    for call in calls or []:
        function = (call.get("function") if isinstance(call, dict) else None) or {}
        name, args = function.get("name"), function.get("arguments")
        out.append((f"call {name} " if name else "") + str(args or ""))
    return "".join(out)


def _answer_text(kind: Kind, body: dict[str, Any]) -> str:
    choice = (body.get("choices") or [{}])[0]
    if kind == "chat":
        message = choice.get("message") or {}
        return str(message.get("content") or "") + _calls_text(message.get("tool_calls"))
    return str(choice.get("text") or "")


def _delta_text(choice: dict[str, Any]) -> str:
    delta = choice.get("delta") or {}
    text = delta.get("content") or choice.get("text") or ""
    return str(text) + _calls_text(delta.get("tool_calls"))


def _check(body: dict[str, Any], model: str) -> None:
    """A cascade judges one answer: n > 1 is the client's 400, naming `n`."""
    n = body.get("n")
    if n is not None and n != 1:
        message = "cascade routes judge one answer: n must be 1 (use a fixed route for n > 1)"
        err = UpstreamError(400, message, "invalid_request_error", False, "n")
        raise CascadeFailed(err, model, [])


def _client_wants_logprobs(kind: Kind, body: dict[str, Any]) -> bool:
    return bool(body.get("logprobs"))


def _failed_step(model: str, err: UpstreamError) -> Step:
    """A call that failed: free, unless the upstream answered it (then its usage is charged)."""
    usage = err.usage or Usage(0, 0, True)
    return Step(model, usage, ",".join(err.attempts), None, {"error": str(err)})


def _strip_logprobs(payload: dict[str, Any]) -> None:
    for choice in payload.get("choices") or []:
        if "logprobs" in choice:
            choice["logprobs"] = None


class EscalationCascade:
    def __init__(
        self,
        route_name: str,
        config: CascadeRoute,
        calls: Mapping[str, CallLimits],  # model -> its timeouts and retries
    ):
        self.route_name = route_name
        self.config = config
        self._calls = calls

    def models(self) -> list[str]:
        judge = self.config.confidence.judge_model
        return [*self.config.models, *([judge] if judge else [])]

    def worst_case_usd(
        self, prompt_tokens: int, max_tokens: int, prices: Mapping[str, CostFn]
    ) -> float:
        """Every model answers in full, and the judge reads each answer but the last."""
        total = sum(prices[m](prompt_tokens, max_tokens, None) for m in self.config.models)
        conf = self.config.confidence
        if conf.judge_model is not None:
            judge_prompt = judge_prompt_bound(conf.top_k)
            steps = len(self.config.models) - 1
            total += steps * prices[conf.judge_model](judge_prompt, 1, None)
        return total

    # -- shared ------------------------------------------------------------------------------
    def _call(self, model: str, kind: Kind, body: dict[str, Any], last: bool) -> UpstreamCall:
        asked = dict(body)
        if not last and self.config.confidence.method != "judge":
            asked.update(logprob_request(kind, self.config.confidence.top_k))
        return self._calls[model].call(kind, asked)

    async def _confidence(
        self,
        kind: Kind,
        body: dict[str, Any],
        answer: str,
        tokens: TokenLogprobs,
        backends: Mapping[str, Backend],
        steps: list[Step],
    ) -> float | None:
        conf = self.config.confidence
        if conf.method != "judge":
            return score(conf.method, tokens)
        judge = conf.judge_model
        assert judge is not None  # the schema requires it for method judge
        limits = self._calls[judge]
        try:
            judged = await ask_judge(backends[judge], kind, body, answer, conf.top_k, limits)
        except UpstreamError as err:  # a judge answered but unusable is paid for all the same
            if err.usage is not None:
                steps.append(Step(judge, err.usage, ",".join(err.attempts), None,
                                  {"role": "judge", "error": str(err)}))  # fmt: skip
            raise
        steps.append(Step(judge, judged.usage, judged.endpoint, judged.provider_cost_usd,
                          {"role": "judge"}))  # fmt: skip
        return p_yes(judged)

    def _passed_over(self, err: UpstreamError, model: str, i: int, steps: list[Step]) -> None:
        """Raise unless the next model may succeed where this one failed."""
        if not err.retryable or i == len(self.config.models) - 1:
            if err.usage is not None:  # answered, but no answer: paid for all the same
                steps.append(_failed_step(model, err))
            raise CascadeFailed(err, model, steps) from None
        steps.append(_failed_step(model, err))

    # -- non-streaming -----------------------------------------------------------------------
    async def complete(
        self, kind: Kind, body: dict[str, Any], backends: Mapping[str, Backend]
    ) -> CascadeResult:
        _check(body, self.config.models[0])
        models = self.config.models
        steps: list[Step] = []
        escalations = 0
        answer: tuple[str, Completion] | None = None  # the latest answer, and whose
        detail: dict[str, Any] = {}
        for i, model in enumerate(models):
            last = i == len(models) - 1
            try:
                done = await backends[model].complete(self._call(model, kind, body, last))
            except UpstreamError as err:
                if answer is not None and (last or not err.retryable):
                    # The stronger model failed: the cheaper answer is better than none.
                    detail["escalation_failed"] = str(err)
                    steps.append(_failed_step(model, err))
                    break
                self._passed_over(err, model, i, steps)
                continue
            answer = (model, done)
            step = Step(model, done.usage, done.endpoint, done.provider_cost_usd)
            steps.append(step)
            if last:
                break
            choice = (done.body.get("choices") or [{}])[0]
            try:
                value = await self._confidence(
                    kind, body, _answer_text(kind, done.body), read_logprobs(kind, choice),
                    backends, steps,
                )  # fmt: skip
            except UpstreamError as err:  # a judge that fails leaves the answer unmeasured
                step.detail["judge_error"] = str(err)
                value = None
            escalate = should_escalate(self.config.confidence, value)
            step.detail.update({"confidence": value, "escalate": escalate})
            if not escalate:
                break
            escalations += 1
        assert answer is not None  # the loop either answered or raised
        model, done = answer
        if not _client_wants_logprobs(kind, body):
            _strip_logprobs(done.body)
        return CascadeResult(done.body, model, steps, {"escalations": escalations, **detail})

    # -- streaming ---------------------------------------------------------------------------
    async def open_stream(
        self, kind: Kind, body: dict[str, Any], backends: Mapping[str, Backend]
    ) -> EscalationStream:
        _check(body, self.config.models[0])
        stream = EscalationStream(self, kind, body, backends)
        await stream.start()
        return stream


class EscalationStream:
    """Holds each cheap model's first tokens, scores them, then streams or escalates."""

    def __init__(
        self,
        cascade: EscalationCascade,
        kind: Kind,
        body: dict[str, Any],
        backends: Mapping[str, Backend],
    ):
        self._cascade = cascade
        self._kind = kind
        self._body = body
        self._backends = backends
        self._strip = not _client_wants_logprobs(kind, body)
        self.model = cascade.config.models[0]
        self.steps: list[Step] = []
        self.detail: dict[str, Any] = {"escalations": 0}
        self._upstream: UpstreamStream | None = None
        self._step: Step | None = None
        self._held: list[dict[str, Any]] = []
        self._iter: AsyncIterator[dict[str, Any]] | None = None

    async def start(self) -> None:
        """Find the model whose held tokens pass; the stream then continues from it."""
        cascade = self._cascade
        models = cascade.config.models
        hold = cascade.config.stream_hold_tokens
        for i, model in enumerate(models):
            last = i == len(models) - 1
            call = cascade._call(model, self._kind, self._body, last)
            try:
                upstream = await self._backends[model].open_stream(call)
            except UpstreamError as err:
                cascade._passed_over(err, model, i, self.steps)
                continue
            self.model, self._upstream = model, upstream
            self._step = Step(model, upstream.usage, upstream.endpoint)
            self.steps.append(self._step)
            self._iter = aiter(upstream)
            if last:
                return
            try:
                held, tokens, text, ended = await self._hold(hold)
            except UpstreamError as err:  # broke while held: nothing was sent, try the next
                self._settle_step()
                self._step.detail["error"] = str(err)
                if not err.retryable:
                    raise CascadeFailed(err, model, self.steps) from None
                continue
            try:
                value = await cascade._confidence(
                    self._kind, self._body, text, tokens, self._backends, self.steps
                )
            except UpstreamError as err:  # a judge that fails leaves the answer unmeasured
                self._step.detail["judge_error"] = str(err)
                value = None
            escalate = should_escalate(cascade.config.confidence, value)
            self._step.detail.update(
                {"confidence": value, "escalate": escalate, "held_tokens": len(tokens)}
            )
            if not escalate:
                self._held = held
                return
            self.detail["escalations"] += 1
            if not ended:
                await upstream.aclose()  # stop paying for an answer that will not be sent
            self._settle_step()

    async def _hold(self, n: int) -> tuple[list[dict[str, Any]], TokenLogprobs, str, bool]:
        assert self._iter is not None
        held: list[dict[str, Any]] = []
        tokens = TokenLogprobs()
        text: list[str] = []
        chunks_with_text = 0
        async for chunk in self._iter:
            held.append(chunk)
            for choice in chunk.get("choices") or []:
                tokens.extend(read_logprobs(self._kind, choice))
                piece = _delta_text(choice)
                if piece:
                    text.append(piece)
                    chunks_with_text += 1
            if max(len(tokens), chunks_with_text) >= n:
                return held, tokens, "".join(text), False
        return held, tokens, "".join(text), True

    def _settle_step(self) -> None:
        if self._step is not None and self._upstream is not None:
            self._step.usage = self._upstream.usage
            self._step.provider_cost_usd = self._upstream.provider_cost_usd

    async def _chunks(self) -> AsyncIterator[dict[str, Any]]:
        assert self._iter is not None
        try:
            for chunk in self._held:
                yield self._shaped(chunk)
            self._held = []
            async for chunk in self._iter:
                yield self._shaped(chunk)
        finally:
            self._settle_step()

    def _shaped(self, chunk: dict[str, Any]) -> dict[str, Any]:
        if not self._strip:
            return chunk
        chunk = copy.copy(chunk)
        chunk["choices"] = [dict(c) for c in chunk.get("choices") or []]
        _strip_logprobs(chunk)
        return chunk

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._chunks()

    async def aclose(self) -> None:
        if self._upstream is not None:
            await self._upstream.aclose()
        self._settle_step()
