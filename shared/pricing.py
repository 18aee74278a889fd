"""Model prices and the cost of one call. Pure domain code: no I/O, Decimal only.

A call is priced for what answered it: the provider's own model (`served_model`), looked up as
`provider/served_model` first (the way LiteLLM's price map keys provider-specific entries, e.g.
`openai/gpt-4o`), then as `served_model`. Prices come in layers: the operator's overrides, then
LiteLLM's price map, then the built-in list; the first layer that knows the model wins, and within a
layer the provider-specific entry wins. A model no layer knows is charged the fallback price and
marked unpriced, so that it is never silently free.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal

from shared.events import LlmCompleted

PER_MILLION = Decimal(1_000_000)


@dataclass(frozen=True)
class ModelPrice:
    """USD per 1M tokens: prompt tokens read from the provider's cache at `cached_input`, those written
    to it (Anthropic's cache creation) at `cache_write_input`; either absent: at `input`."""

    input: Decimal
    output: Decimal
    cached_input: Decimal | None = None
    cache_write_input: Decimal | None = None

    @property
    def dearest(self) -> Decimal:
        return max(self.input, self.output)


def _p(input_: str, output: str, cached: str | None = None, cache_write: str | None = None) -> ModelPrice:
    return ModelPrice(Decimal(input_), Decimal(output), Decimal(cached) if cached else None,
                      Decimal(cache_write) if cache_write else None)


# Public list prices per 1M tokens for the models the gateway maps by default and the common ones of
# each kind of provider (Together.ai, OpenAI and Azure OpenAI's models, Anthropic's, embeddings).
DEFAULT_PRICES: dict[str, ModelPrice] = {
    "meta-llama/Llama-3-70b-chat-hf": _p("0.90", "0.90"),
    "meta-llama/Llama-3-8b-chat-hf": _p("0.20", "0.20"),
    "meta-llama/Llama-3.3-70B-Instruct-Turbo": _p("0.88", "0.88"),
    "meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo": _p("0.18", "0.18"),
    "gpt-4o": _p("2.50", "10.00", "1.25"),
    "gpt-4o-mini": _p("0.15", "0.60", "0.075"),
    "gpt-4.1": _p("2.00", "8.00", "0.50"),
    "gpt-4.1-mini": _p("0.40", "1.60", "0.10"),
    "claude-opus-4-1-20250805": _p("15.00", "75.00", "1.50", "18.75"),
    "claude-sonnet-4-20250514": _p("3.00", "15.00", "0.30", "3.75"),
    "claude-3-5-haiku-20241022": _p("0.80", "4.00", "0.08", "1.00"),
    "text-embedding-3-small": _p("0.02", "0"),
    "text-embedding-3-large": _p("0.13", "0"),
    "BAAI/bge-large-en-v1.5": _p("0.02", "0"),
}

DEFAULT_FALLBACK_PRICE = _p("10.00", "30.00")


@dataclass(frozen=True)
class Cost:
    usd: Decimal
    priced: bool
    unpriced: tuple[str, ...] = ()  # `provider/model` of each part charged the fallback price


def price_key(provider: str | None, model: str) -> str:
    """How a model is named in a price table: `provider/model`, or the model alone."""
    return f"{provider}/{model}" if provider else model


class PriceCatalog:
    def __init__(self, layers: Iterable[Mapping[str, ModelPrice]], fallback: ModelPrice = DEFAULT_FALLBACK_PRICE):
        self._layers = [dict(layer) for layer in layers]
        self.fallback = fallback

    @classmethod
    def with_overrides(cls, overrides: Mapping[str, Mapping[str, Decimal]],
                       litellm_prices: Mapping[str, ModelPrice] | None = None,
                       fallback: ModelPrice = DEFAULT_FALLBACK_PRICE) -> PriceCatalog:
        """The operator's overrides, then LiteLLM's price map (parsed by parse_litellm_prices), then the
        built-in prices."""
        def optional(entry: Mapping[str, Decimal], name: str) -> Decimal | None:
            return Decimal(entry[name]) if entry.get(name) is not None else None

        operator = {
            model: ModelPrice(Decimal(entry["input"]), Decimal(entry["output"]), optional(entry, "cached_input"),
                              optional(entry, "cache_write_input"))
            for model, entry in overrides.items()
        }
        return cls([operator, litellm_prices or {}, DEFAULT_PRICES], fallback)

    def price(self, model: str, provider: str | None = None) -> ModelPrice | None:
        specific = price_key(provider, model)
        for layer in self._layers:
            found = layer.get(specific) or layer.get(model)
            if found is not None:
                return found
        return None

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int, cached_prompt_tokens: int = 0,
             provider: str | None = None, cache_write_prompt_tokens: int = 0) -> Cost:
        """`prompt_tokens` counts every prompt token, those read from and written to the cache included."""
        known = self.price(model, provider)
        price = known or self.fallback
        cached = min(cached_prompt_tokens, prompt_tokens) if price.cached_input is not None else 0
        written = min(cache_write_prompt_tokens, prompt_tokens - cached) if price.cache_write_input is not None else 0
        usd = (
            (prompt_tokens - cached - written) * price.input
            + cached * (price.cached_input or Decimal(0))
            + written * (price.cache_write_input or Decimal(0))
            + completion_tokens * price.output
        ) / PER_MILLION
        return Cost(usd=usd, priced=known is not None, unpriced=() if known else (price_key(provider, model),))

    def cost_of(self, event: LlmCompleted) -> Cost:
        """What a call cost: the attempt that answered (or, when none did, the last one billed) at the
        price of its provider's model, plus each other attempt its provider billed, at that attempt's
        model. The one pricing of a call: the cost service records it, the limiter settles to it."""
        parts = [self.cost(event.answered_by, event.prompt_tokens, event.completion_tokens,
                           event.cached_prompt_tokens, event.provider, event.cache_write_prompt_tokens)]
        parts += [self.cost(a.served_model, a.prompt_tokens, 0, provider=a.provider) for a in event.billed_attempts]
        return Cost(usd=sum((part.usd for part in parts), Decimal(0)), priced=all(part.priced for part in parts),
                    unpriced=tuple(name for part in parts for name in part.unpriced))

    def dearest_rate(self, served_by: Iterable[tuple[str | None, str]]) -> Decimal:
        """USD per 1M tokens at the dearer of input and output, on the dearest (provider, model) that may
        serve a call: the rate a reservation assumes for every token of it."""
        return max(((self.price(model, provider) or self.fallback).dearest for provider, model in served_by),
                   default=self.fallback.dearest)


def parse_litellm_prices(data: Mapping[str, object]) -> dict[str, ModelPrice]:
    """Read LiteLLM's model_prices_and_context_window.json (USD per token) into per-1M prices, under
    its own keys (provider-specific ones like `together_ai/meta-llama/...` included)."""
    prices: dict[str, ModelPrice] = {}
    for model, entry in data.items():
        if not isinstance(entry, dict) or "input_cost_per_token" not in entry:
            continue
        cached, written = entry.get("cache_read_input_token_cost"), entry.get("cache_creation_input_token_cost")
        prices[model] = ModelPrice(
            Decimal(str(entry["input_cost_per_token"])) * PER_MILLION,
            Decimal(str(entry.get("output_cost_per_token", 0))) * PER_MILLION,
            Decimal(str(cached)) * PER_MILLION if cached is not None else None,
            Decimal(str(written)) * PER_MILLION if written is not None else None,
        )
    return prices


NANO = Decimal("1e-9")


def to_nano_usd(usd: Decimal) -> int:
    """Whole nano-dollars, rounded up: the unit of budget counters in Redis."""
    return int((usd / NANO).to_integral_value(rounding=ROUND_CEILING))
