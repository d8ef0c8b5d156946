"""Entropy Adaptive Decoding (EAD): token-level switching between a small and a large model.

After "Entropy Adaptive Decoding" (the small model drafts, the large model takes over while the
small one is unsure). The loop runs over vLLM's completions API, so any two vLLM-served models
pair up, whatever their tokenizers:

- the small model writes `chunk` tokens a call, with `logprobs: top_k`. Each token's entropy is
  that of its top-k distribution, renormalised (the tail beyond k is unknown; renormalising keeps
  the measure in [0, ln k] nats for every model alike). The rolling mean over the last `window`
  tokens is taken after each token;
- at the first token where rolling mean >= threshold, the small model's text is kept up to but
  excluding that token (its distribution there is the uncertain one, so, as in the paper, the
  large model writes it), and the rest of that call is dropped (paid for all the same);
- the large model continues from the text so far for `span` tokens, again with logprobs, and
  keeps control for another span while its own rolling entropy stays >= threshold; once it
  falls, the small model continues. The window restarts at each hand-over: the two models'
  entropies are not comparable.

`>=` makes threshold 0 mean "always the large model" (a peaked distribution has entropy exactly
0), and a threshold no entropy reaches (ln k is the most there is) means "never".

Each call sends the prompt plus the text so far as text: chat is rendered with each model's own
chat template (vLLM's /tokenize + /detokenize), once per model per request; a model with no
template gets the plain one in `plain_chat_prompt`. `max_tokens` caps the tokens kept in the
answer. Text is streamed as each call returns, holding back just enough characters to catch a
stop sequence split between two calls, so streamed and whole answers are the same text.
"""

from __future__ import annotations

import math
import time
import uuid
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from cascades.base import CascadeFailed, CascadeResult, Step
from gateway.backends.base import Backend, CallLimits, Kind, UpstreamError, Usage
from gateway.backends.vllm_pool import VllmPool
from policies.pricing import CostFn
from policies.schema import EadRoute

# The re-sent text is re-tokenized by the other model, so its token count is bounded by bytes
# (no tokenizer makes more tokens than UTF-8 bytes). The loop stops ("length") before the text
# passes this many bytes per budgeted token, which keeps `worst_case_usd` a true bound; real text
# runs 3-5 bytes a token, so only pathological output ever meets the cap.
BYTES_PER_TOKEN = 8
DEFAULT_MAX_TOKENS = 512  # the policy's `defaults.max_tokens` default
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


# -- entropy ---------------------------------------------------------------------------------
def token_entropy(top: Mapping[str, float] | None) -> float:
    """Entropy (nats) of one position's top-k distribution, renormalised over the k returned.

    vLLM may return k+1 entries (the sampled token when outside the top k); all are used."""
    if not top:
        return 0.0
    peak = max(top.values())
    weights = [math.exp(lp - peak) for lp in top.values()]
    total = sum(weights)
    return -sum(w / total * math.log(w / total) for w in weights if w > 0)


class RollingMean:
    """Mean of the last `size` values; over what there is while fewer have arrived."""

    def __init__(self, size: int):
        self._values: deque[float] = deque(maxlen=size)

    def push(self, value: float) -> float:
        self._values.append(value)
        return sum(self._values) / len(self._values)

    def mean(self) -> float:
        return sum(self._values) / len(self._values) if self._values else 0.0

    def clear(self) -> None:
        self._values.clear()


# -- prompts ---------------------------------------------------------------------------------
def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if not content:
        return ""
    return "".join(p.get("text", "") for p in content if isinstance(p, dict))


def plain_chat_prompt(messages: list[dict[str, Any]]) -> str:
    """For a model without a chat template: "Role: content" paragraphs, then "Assistant:"."""
    parts = [
        f"{str(m.get('role', 'user')).capitalize()}: {_content_text(m.get('content'))}"
        for m in messages
    ]
    return "\n\n".join([*parts, "Assistant:"])


# -- one request -----------------------------------------------------------------------------
@dataclass
class _ModelTally:
    usage: Usage = field(default_factory=lambda: Usage(exact=True))
    endpoints: list[str] = field(default_factory=list)
    calls: int = 0
    kept: int = 0  # tokens of this model in the answer
    call_ms: float = 0.0
    generated: int = 0  # tokens generated, kept or not


@dataclass(slots=True)
class _Piece:
    """What one completions call gave: its text, token offsets and entropies."""

    text: str
    offsets: list[int]
    entropies: list[float]
    finish: str | None


def _piece(body: dict[str, Any]) -> _Piece:
    choice = body["choices"][0]
    text = choice.get("text") or ""
    lp = choice.get("logprobs") or {}
    offsets = [min(int(o), len(text)) for o in lp.get("text_offset") or []]
    entropies = [token_entropy(t) for t in lp.get("top_logprobs") or []]
    if not offsets:  # no logprobs at all: count the call's tokens from its usage
        n = int((body.get("usage") or {}).get("completion_tokens") or 0)
        offsets, entropies = [0] * n, [0.0] * n
    return _Piece(text, offsets, entropies, choice.get("finish_reason"))


class _Decoder:
    """The EAD loop for one request. `pieces()` yields answer text as it becomes final."""

    def __init__(
        self, cascade: EadCascade, kind: Kind, body: dict[str, Any], backends: Mapping[str, Backend]
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
            cut = None if on_large else self._handover_at(piece, window)
            if on_large:
                for h in piece.entropies:
                    window.push(h)
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

    def _handover_at(self, piece: _Piece, window: RollingMean) -> int | None:
        """The first token of a small call at which the rolling entropy reaches the threshold."""
        last = len(piece.entropies) - 1
        for i, h in enumerate(piece.entropies):
            if window.push(h) >= self.c.config.threshold:
                # The answer ended before the hand-over when: the token is past the end of the
                # text, not the last (EOS is), so vLLM cut the text at a stop sequence before
                # it; or the text kept up to it completes a stop split across two calls.
                at = piece.offsets[i]
                past_stop = piece.finish == "stop" and i < last and at >= len(piece.text)
                if past_stop or (
                    self.stops
                    and self._stop_at(self.text + piece.text[:at], len(self.text)) is not None
                ):
                    return None
                return i
        return None

    def _stop_at(self, text: str, start: int) -> int | None:
        """Where the first stop sequence that ends past `start` begins in `text`, or None: one
        split across two calls, which vLLM saw as a stop in neither."""
        found = [at for s in self.stops if (at := text.find(s, max(0, start - len(s) + 1))) >= 0]
        return min(found, default=None)

    def _ended(self, piece: _Piece, asked: int, start: int) -> bool:
        """Whether the answer is complete after this call's text was appended at `start`."""
        at = self._stop_at(self.text, start)
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
                if isinstance(backend, VllmPool):
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

    async def _call(self, model: str, max_tokens: int) -> _Piece:
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
            piece = _piece(done.body)
        except (KeyError, IndexError, TypeError, ValueError) as exc:  # paid for, yet unreadable
            err = UpstreamError(502, f"{model} answered a malformed completion: {exc!r}")
            err.attempts = [done.endpoint]
            raise CascadeFailed(err, model, self.steps()) from None
        tally.generated += len(piece.entropies)
        return piece

    def _count(self, model: str, usage: Usage, endpoint: str) -> None:
        tally = self.tally[model]
        tally.calls += 1
        tally.usage.prompt_tokens += usage.prompt_tokens
        tally.usage.completion_tokens += usage.completion_tokens
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
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "models": models,
        }

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


# -- OpenAI shapes ---------------------------------------------------------------------------
class _Shapes:
    def __init__(self, kind: Kind, model: str):
        self.kind = kind
        self.model = model
        chat = kind == "chat"
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-ead-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.chunk_object = "chat.completion.chunk" if chat else "text_completion"

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": self.chunk_object,
            "created": self.created,
            "model": self.model,
            "choices": choices,
            **extra,
        }

    def delta(self, text: str, finish: str | None = None, role: bool = False) -> dict[str, Any]:
        if self.kind == "chat":
            delta: dict[str, Any] = {"role": "assistant", "content": text} if role else {}
            if text and not role:
                delta["content"] = text
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        return self._chunk([choice])

    def usage_chunk(self, usage: dict[str, Any]) -> dict[str, Any]:
        return self._chunk([], usage=usage)

    def response(self, text: str, finish: str, usage: dict[str, Any]) -> dict[str, Any]:
        if self.kind == "chat":
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": finish,
            }
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
            obj = "text_completion"
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": usage,
        }


class EadStream:
    """An open EAD stream (a `CascadeStream`): the first text is already generated."""

    def __init__(
        self, decoder: _Decoder, pieces: AsyncGenerator[str, None], first: str | None, model: str
    ):
        self.model = model
        self.steps: list[Step] = []
        self.detail: dict[str, Any] = {}
        self._decoder = decoder
        self._pieces = pieces
        self._first = first
        self._shapes = _Shapes(decoder.kind, decoder.c.route_name)
        self._closed = False

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[dict[str, Any]]:
        shapes = self._shapes
        try:
            if shapes.kind == "chat":
                yield shapes.delta("", role=True)
            if self._first:
                yield shapes.delta(self._first)
                async for text in self._pieces:
                    yield shapes.delta(text)
            yield shapes.delta("", finish=self._decoder.finish)
            yield shapes.usage_chunk(self._decoder.usage())
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Cancels a call in flight; closing its connection makes vLLM abort the generation.
        await self._pieces.aclose()
        self.steps = self._decoder.steps()
        self.detail = self._decoder.detail()


# -- the cascade -----------------------------------------------------------------------------
class EadCascade:
    def __init__(
        self,
        route_name: str,
        config: EadRoute,
        prices: Mapping[str, CostFn],
        timeout_s: float,
        retries: int,
        *,
        default_max_tokens: int = DEFAULT_MAX_TOKENS,
        limits: CallLimits | None = None,  # the small model's timeouts, for every call
    ):
        self.route_name = route_name
        self.config = config
        self.small, self.large = config.small, config.large
        self.prices = prices
        self.timeout_s = timeout_s
        self.retries = retries
        self.limits = limits or CallLimits(timeout_s, retries)
        self.default_max_tokens = default_max_tokens

    def models(self) -> list[str]:
        return [self.small, self.large]

    def max_tokens_of(self, body: dict[str, Any]) -> int:
        """The answer's token budget: the client's max_tokens (or max_completion_tokens for chat,
        the larger), or the policy default. worst_case_usd must be given the same number."""
        # The larger of the two (chat), as the gateway's reservation reads them.
        keys = ("max_tokens", "max_completion_tokens") if "messages" in body else ("max_tokens",)
        limits = [int(body[k]) for k in keys if body.get(k)]
        return max(limits, default=self.default_max_tokens)

    def call_bounds(self, max_tokens: int) -> tuple[int, int]:
        """The most calls (small, large) one request makes with a budget of `max_tokens`.

        A large call keeps all its `span` tokens, or ends the answer (stop, EOS, budget, full
        context): at most max_tokens // span + 1 large calls. A small call either keeps all its
        `chunk` tokens or ends the answer (at most max_tokens // chunk + 1 such calls), or hands
        over, and a hand-over is followed by a large call (at most as many as large calls)."""
        large = max_tokens // self.config.span + 1
        small = max_tokens // self.config.chunk + 1 + large
        return small, large

    def worst_case_usd(
        self, prompt_tokens: int, max_tokens: int, prices: Mapping[str, CostFn]
    ) -> float:
        """calls x (prompt + BOS + the most the re-sent text can be) input tokens, and each
        call's whole max_tokens as output, for each model.

        The re-sent text is at most BYTES_PER_TOKEN * max_tokens bytes (the loop stops before
        more), so at most that many tokens in any tokenizer. `prompt_tokens` is the gateway's
        bound (bytes plus template overhead), which holds for each model's rendering."""
        small_calls, large_calls = self.call_bounds(max_tokens)
        resent = prompt_tokens + 1 + BYTES_PER_TOKEN * max_tokens
        return prices[self.small](
            small_calls * resent, small_calls * self.config.chunk, None
        ) + prices[self.large](large_calls * resent, large_calls * self.config.span, None)

    def _check(self, kind: Kind, body: dict[str, Any]) -> None:
        """Refuse what the loop cannot give, naming the parameter (a client error: 400)."""
        prompt, seed = body.get("prompt"), body.get("seed")
        problems = [
            ("n", (body.get("n") or 1) != 1, "EAD answers one choice (n=1)"),
            (
                "seed",  # each call sends seed + its number
                seed is not None and (isinstance(seed, bool) or not isinstance(seed, int | float)),
                "seed must be an integer",
            ),
            ("logprobs", bool(body.get("logprobs")), "EAD routes return no logprobs"),
            ("tools", bool(body.get("tools")), "EAD routes do not call tools"),
            (
                "prompt",
                kind == "completions" and not isinstance(prompt, str),
                "EAD routes take one text prompt",
            ),
        ]
        for param, bad, message in problems:
            if bad:
                err = UpstreamError(400, message, "invalid_request_error", False, param)
                raise CascadeFailed(err, self.small, [])

    async def complete(
        self, kind: Kind, body: dict[str, Any], backends: Mapping[str, Backend]
    ) -> CascadeResult:
        self._check(kind, body)
        decoder = _Decoder(self, kind, body, backends)
        text = "".join([piece async for piece in decoder.pieces()])
        out = _Shapes(kind, self.route_name).response(text, decoder.finish, decoder.usage())
        return CascadeResult(out, f"{self.small}+{self.large}", decoder.steps(), decoder.detail())

    async def open_stream(
        self, kind: Kind, body: dict[str, Any], backends: Mapping[str, Backend]
    ) -> EadStream:
        """Runs to the first text before answering, so an early failure is a plain error."""
        self._check(kind, body)
        decoder = _Decoder(self, kind, body, backends)
        pieces = decoder.pieces()
        first = await anext(pieces, None)
        return EadStream(decoder, pieces, first, f"{self.small}+{self.large}")
