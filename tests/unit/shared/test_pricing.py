"""Prices and the cost of a completion, in Decimal."""

from __future__ import annotations

from decimal import Decimal

from shared.pricing import PriceCatalog, parse_litellm_prices, to_nano_usd


def test_cost_is_exact_decimal_for_the_default_models():
    catalog = PriceCatalog.with_overrides({})
    cost = catalog.cost("meta-llama/Llama-3-70b-chat-hf", 150, 300)
    assert cost.usd == Decimal("0.000405") and cost.priced
    assert catalog.cost("meta-llama/Llama-3-8b-chat-hf", 1_000_000, 0).usd == Decimal("0.2")
    assert catalog.cost("gpt-4o-mini", 1000, 1000, cached_prompt_tokens=400).usd == Decimal("0.00072")


def test_unpriced_model_uses_the_fallback_rate_and_says_so():
    cost = PriceCatalog.with_overrides({}).cost("mystery", 1_000_000, 0)
    assert cost.usd == Decimal("10") and cost.priced is False


def test_overrides_and_litellm_prices():
    litellm = parse_litellm_prices({
        "sample_spec": {"input_cost_per_token": 0},
        "my-model": {"input_cost_per_token": 1.5e-06, "output_cost_per_token": 2e-06,
                     "cache_read_input_token_cost": 7.5e-07},
    })
    catalog = PriceCatalog.with_overrides({"gpt-4o": {"input": Decimal("1"), "output": Decimal("2")}}, litellm)
    assert catalog.price("my-model").input == Decimal("1.5") and catalog.price("my-model").cached_input == Decimal("0.75")
    assert catalog.price("gpt-4o").output == Decimal("2")
    assert parse_litellm_prices({"x": "not a dict"}) == {}


def test_nano_dollars_round_up():
    assert to_nano_usd(Decimal("0.000000001")) == 1
    assert to_nano_usd(Decimal("0.0000000011")) == 2
