"""Model prices and the cost of one completion. Pure domain code: no I/O, Decimal only."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal

PER_MILLION = Decimal(1_000_000)


@dataclass(frozen=True)
class ModelPrice:
    """USD per 1M tokens."""

    input: Decimal
    output: Decimal
    cached_input: Decimal | None = None


def _p(input_: str, output: str, cached: str | None = None) -> ModelPrice:
    return ModelPrice(Decimal(input_), Decimal(output), Decimal(cached) if cached else None)


# Public list prices per 1M tokens for the models the gateway maps (Together.ai and OpenAI).
DEFAULT_PRICES: dict[str, ModelPrice] = {
    "meta-llama/Llama-3-70b-chat-hf": _p("0.90", "0.90"),
    "meta-llama/Llama-3-8b-chat-hf": _p("0.20", "0.20"),
    "meta-llama/Llama-3.3-70B-Instruct-Turbo": _p("0.88", "0.88"),
    "meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo": _p("0.18", "0.18"),
    "gpt-4o": _p("2.50", "10.00", "1.25"),
    "gpt-4o-mini": _p("0.15", "0.60", "0.075"),
    "gpt-4.1": _p("2.00", "8.00", "0.50"),
    "gpt-4.1-mini": _p("0.40", "1.60", "0.10"),
}

# Used for a model with no price, so that it is never silently free (the row is marked unpriced).
DEFAULT_FALLBACK_PRICE = _p("10.00", "30.00")


@dataclass(frozen=True)
class Cost:
    usd: Decimal
    priced: bool


class PriceCatalog:
    def __init__(self, prices: Mapping[str, ModelPrice], fallback: ModelPrice = DEFAULT_FALLBACK_PRICE):
        self._prices = dict(prices)
        self.fallback = fallback

    @classmethod
    def with_overrides(cls, overrides: Mapping[str, Mapping[str, Decimal]],
                       litellm_prices: Mapping[str, ModelPrice] | None = None,
                       fallback: ModelPrice = DEFAULT_FALLBACK_PRICE) -> PriceCatalog:
        """The default prices, then LiteLLM's price map (parsed by parse_litellm_prices), then overrides."""
        prices = dict(DEFAULT_PRICES)
        if litellm_prices:
            prices.update(litellm_prices)
        for model, entry in overrides.items():
            prices[model] = ModelPrice(
                Decimal(entry["input"]), Decimal(entry["output"]),
                Decimal(entry["cached_input"]) if entry.get("cached_input") is not None else None,
            )
        return cls(prices, fallback)

    def price(self, model: str) -> ModelPrice | None:
        return self._prices.get(model)

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int, cached_prompt_tokens: int = 0) -> Cost:
        known = self._prices.get(model)
        price = known or self.fallback
        cached = min(cached_prompt_tokens, prompt_tokens) if price.cached_input is not None else 0
        usd = (
            (prompt_tokens - cached) * price.input
            + cached * (price.cached_input or Decimal(0))
            + completion_tokens * price.output
        ) / PER_MILLION
        return Cost(usd=usd, priced=known is not None)

    def worst_case_usd(self, model: str, tokens: int) -> Decimal:
        """Upper bound of a call that uses `tokens` in total, all at the dearer of the two rates."""
        price = self._prices.get(model) or self.fallback
        return tokens * max(price.input, price.output) / PER_MILLION


def parse_litellm_prices(data: Mapping[str, object]) -> dict[str, ModelPrice]:
    """Read LiteLLM's model_prices_and_context_window.json (USD per token) into per-1M prices."""
    prices: dict[str, ModelPrice] = {}
    for model, entry in data.items():
        if not isinstance(entry, dict) or "input_cost_per_token" not in entry:
            continue
        cached = entry.get("cache_read_input_token_cost")
        prices[model] = ModelPrice(
            Decimal(str(entry["input_cost_per_token"])) * PER_MILLION,
            Decimal(str(entry.get("output_cost_per_token", 0))) * PER_MILLION,
            Decimal(str(cached)) * PER_MILLION if cached is not None else None,
        )
    return prices


NANO = Decimal("1e-9")


def to_nano_usd(usd: Decimal) -> int:
    """Whole nano-dollars, rounded up: the unit of budget counters in Redis."""
    return int((usd / NANO).to_integral_value(rounding=ROUND_CEILING))
