"""EadCascade: an EAD route's limits, cost bound and entry points (see the package docstring)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cascades.base import CascadeFailed, CascadeResult
from cascades.ead.decoder import BYTES_PER_TOKEN, Decoder
from cascades.ead.stream import EadStream, response
from gateway.backends.base import Backend, CallLimits, Kind, UpstreamError
from policies.pricing import CostFn
from policies.schema import EadRoute

DEFAULT_MAX_TOKENS = 512  # the policy's `defaults.max_tokens` default
_STRUCTURED = frozenset({"json_schema", "json_object", "structural_tag"})


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
        fmt = body.get("response_format")
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
                "response_format",  # the loop continues free text: no grammar can hold it
                isinstance(fmt, dict) and fmt.get("type") in _STRUCTURED,
                "EAD routes write free text: response_format json_schema / json_object is not "
                "supported (use a fixed or cascade route)",
            ),
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
        decoder = Decoder(self, kind, body, backends)
        text = "".join([piece async for piece in decoder.pieces()])
        out = response(decoder, text)
        return CascadeResult(out, f"{self.small}+{self.large}", decoder.steps(), decoder.detail())

    async def open_stream(
        self, kind: Kind, body: dict[str, Any], backends: Mapping[str, Backend]
    ) -> EadStream:
        """Runs to the first text before answering, so an early failure is a plain error."""
        self._check(kind, body)
        decoder = Decoder(self, kind, body, backends)
        pieces = decoder.pieces()
        first = await anext(pieces, None)
        return EadStream(decoder, pieces, first, f"{self.small}+{self.large}")
