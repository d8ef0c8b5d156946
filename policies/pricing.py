"""Turn token usage into dollars with the policy's price table."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Protocol

from gateway.provider_prices import litellm_cache_read_per_1m, litellm_cost_usd
from policies.schema import GpuHourPricing, LitellmModel, ModelConfig, Policy, TokenPricing


class CostFn(Protocol):
    """USD of a call: (prompt_tokens, completion_tokens, provider_cost_usd), and of the prompt
    tokens those `cached` ones read from the upstream's prefix cache (0: none, full price)."""

    def __call__(
        self, prompt: int, completion: int, provider: float | None, /, cached: int = 0
    ) -> float: ...


def token_pricing(pricing: TokenPricing | GpuHourPricing | None) -> TokenPricing | None:
    if isinstance(pricing, GpuHourPricing):
        return pricing.as_token_pricing()
    return pricing


def _priced(p: TokenPricing, cached_per_1m: Callable[[], float]) -> CostFn:
    inp, out = p.input_per_1m / 1e6, p.output_per_1m / 1e6

    def cost(prompt: int, completion: int, _provider: float | None, /, cached: int = 0) -> float:
        cached = min(max(cached, 0), prompt)
        hit = cached_per_1m() / 1e6 if cached else 0.0
        return (prompt - cached) * inp + cached * hit + completion * out

    return cost


def cached_input_per_1m(model: ModelConfig, p: TokenPricing) -> float:
    """The price of a cached prompt token: the policy's, else (a remote model) litellm's
    cache-read price where its map knows one, else the input price: no discount unless known."""
    if p.cached_input_per_1m is not None:
        return p.cached_input_per_1m
    if isinstance(model, LitellmModel):
        known = litellm_cache_read_per_1m(model.model)
        if known is not None:
            return min(known, p.input_per_1m)
    return p.input_per_1m


def _from_provider(litellm_model: str) -> CostFn:
    def cost(prompt: int, completion: int, provider: float | None, /, cached: int = 0) -> float:
        if provider is not None:
            return provider
        return litellm_cost_usd(litellm_model, prompt, completion, cached) or 0.0

    return cost


def price_table(policy: Policy) -> dict[str, CostFn]:
    """One cost function per model, built once per policy load, never on the hot path."""
    table: dict[str, CostFn] = {}
    for name, model in policy.models.items():
        p = token_pricing(model.pricing)
        if p is not None:
            # Asked of litellm's map only once a call reads its cache: loading the policy
            # (the report, `policy validate`) never waits for litellm's import.
            table[name] = _priced(
                p, functools.cache(functools.partial(cached_input_per_1m, model, p))
            )
        elif isinstance(model, LitellmModel):
            table[name] = _from_provider(model.model)
    return table
