"""Turn token usage into dollars with the policy's price table."""

from __future__ import annotations

from collections.abc import Callable

from gateway.provider_prices import litellm_cost_usd
from policies.schema import GpuHourPricing, LitellmModel, Policy, TokenPricing

# (prompt_tokens, completion_tokens, provider_cost_usd) -> USD
CostFn = Callable[[int, int, float | None], float]


def token_pricing(pricing: TokenPricing | GpuHourPricing | None) -> TokenPricing | None:
    if isinstance(pricing, GpuHourPricing):
        return pricing.as_token_pricing()
    return pricing


def _priced(p: TokenPricing) -> CostFn:
    inp, out = p.input_per_1m / 1e6, p.output_per_1m / 1e6
    return lambda prompt, completion, _provider: prompt * inp + completion * out


def _from_provider(litellm_model: str) -> CostFn:
    def cost(prompt: int, completion: int, provider: float | None) -> float:
        if provider is not None:
            return provider
        return litellm_cost_usd(litellm_model, prompt, completion) or 0.0

    return cost


def price_table(policy: Policy) -> dict[str, CostFn]:
    """One cost function per model, built once per policy load, never on the hot path."""
    table: dict[str, CostFn] = {}
    for name, model in policy.models.items():
        p = token_pricing(model.pricing)
        if p is not None:
            table[name] = _priced(p)
        elif isinstance(model, LitellmModel):
            table[name] = _from_provider(model.model)
    return table
