"""Prices and the cost of a completion, in Decimal."""

from __future__ import annotations

from decimal import Decimal

from shared.events import BilledAttempt, LlmCompleted
from shared.pricing import Cost, ModelPrice, PriceCatalog, parse_litellm_prices, to_nano_usd


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


def answered(**fields) -> LlmCompleted:
    return LlmCompleted(**{"request_id": "r", "provider": "openai", "model": "meta-llama/Llama-3-70b-chat-hf",
                           "prompt_tokens": 1000, "completion_tokens": 2000, "endpoint": "/v1/chat/completions",
                           "success": True, "latency_ms": 5, **fields})


def test_a_call_is_priced_at_the_model_that_answered_not_the_one_asked_for():
    catalog = PriceCatalog.with_overrides({})
    cost = catalog.cost_of(answered(served_model="gpt-4o"))  # gpt-4o: $2.50 in, $10.00 out
    assert cost == Cost(usd=Decimal("0.0225"), priced=True)
    asked = catalog.cost_of(answered(provider="together_ai"))  # no served_model: what was asked for answered
    assert asked.usd == Decimal("0.0027")


def test_a_provider_specific_price_wins_within_its_layer_and_the_operator_wins_over_the_price_map():
    litellm = parse_litellm_prices({"openai/gpt-4o": {"input_cost_per_token": 5e-06, "output_cost_per_token": 2e-05},
                                    "gpt-4o-mini": {"input_cost_per_token": 1e-06, "output_cost_per_token": 1e-06}})
    catalog = PriceCatalog.with_overrides({"openai/gpt-4o": {"input": Decimal("3"), "output": Decimal("12")},
                                           "gpt-4o": {"input": Decimal("1"), "output": Decimal("1")},
                                           "gpt-4o-mini": {"input": Decimal("0.5"), "output": Decimal("0.5")}},
                                          litellm)
    assert catalog.price("gpt-4o", "openai") == ModelPrice(Decimal("3"), Decimal("12"))
    assert catalog.price("gpt-4o", "azure") == ModelPrice(Decimal("1"), Decimal("1"))  # no azure/ entry
    assert catalog.price("gpt-4o") == ModelPrice(Decimal("1"), Decimal("1"))
    assert catalog.price("gpt-4o-mini", "openai").input == Decimal("0.5")  # the operator's plain price, over the map
    assert PriceCatalog.with_overrides({}, litellm).price("gpt-4o", "openai").input == Decimal("5")


def test_an_unknown_served_model_is_charged_the_fallback_and_named_unpriced():
    cost = PriceCatalog.with_overrides({}).cost_of(answered(served_model="gpt-9", prompt_tokens=1_000_000,
                                                            completion_tokens=0))
    assert cost == Cost(usd=Decimal("10"), priced=False, unpriced=("openai/gpt-9",))


def test_each_billed_attempt_is_priced_at_its_own_model():
    call = answered(served_model="gpt-4o", prompt_tokens=100, completion_tokens=10, billed_attempts=[
        BilledAttempt(provider="together_ai", served_model="meta-llama/Llama-3-70b-chat-hf", prompt_tokens=100)])
    cost = PriceCatalog.with_overrides({}).cost_of(call)
    assert cost.usd == Decimal("0.00035") + Decimal("0.00009")  # gpt-4o's answer, Llama's timed-out attempt
    assert (call.total_prompt_tokens, call.total_tokens) == (200, 210)


def test_the_reservation_rate_is_the_dearest_route_at_its_dearer_direction():
    catalog = PriceCatalog.with_overrides({})
    assert catalog.dearest_rate([("together_ai", "meta-llama/Llama-3-70b-chat-hf"), ("openai", "gpt-4o")]) == 10
    assert catalog.dearest_rate([("together_ai", "nobody-priced-this")]) == Decimal("30")  # the fallback's output


def test_prompt_cache_reads_and_writes_have_their_own_prices():
    catalog = PriceCatalog.with_overrides({"my-claude": {"input": Decimal("3"), "output": Decimal("15"),
                                                         "cached_input": Decimal("0.30"),
                                                         "cache_write_input": Decimal("3.75")}})
    # 1,000 prompt tokens: 600 read from the cache, 300 written to it, 100 plain; 200 completion tokens
    cost = catalog.cost("my-claude", 1000, 200, cached_prompt_tokens=600, cache_write_prompt_tokens=300)
    assert cost.usd == Decimal("0.004605")  # 0.0003 + 0.00018 + 0.001125 + 0.003
    event = LlmCompleted(request_id="r", provider="anthropic", model="claude", served_model="my-claude",
                         prompt_tokens=1000, completion_tokens=200, cached_prompt_tokens=600,
                         cache_write_prompt_tokens=300, endpoint="/v1/chat/completions", success=True, latency_ms=5)
    assert catalog.cost_of(event).usd == Decimal("0.004605")
    # a model without a cache-write price bills the written tokens at its input price
    assert catalog.cost("gpt-4o", 1000, 0, cache_write_prompt_tokens=300).usd == Decimal("0.0025")


def test_litellm_cache_creation_prices_are_read():
    [price] = parse_litellm_prices({"claude-x": {"input_cost_per_token": 3e-06, "output_cost_per_token": 1.5e-05,
                                                 "cache_read_input_token_cost": 3e-07,
                                                 "cache_creation_input_token_cost": 3.75e-06}}).values()
    assert (price.cached_input, price.cache_write_input) == (Decimal("0.3"), Decimal("3.75"))
