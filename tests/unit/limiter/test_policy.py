"""The limiter's rules: what a request reserves, which counters it touches, how a reading becomes a
decision, and what a finished call settles to."""

from __future__ import annotations

from decimal import Decimal

from services.limiter.policy import CounterReading, LimitPolicy, LimitsBook, reserved_tokens, subject_key
from shared.events import BilledAttempt, LimitRequest, LlmCompleted
from shared.limits import Budget, ScopeLimits
from shared.policy import DEFAULT_MODELS, DEFAULT_TIERS, ModelConfig
from shared.pricing import PriceCatalog, to_nano_usd

MODEL = "meta-llama/Llama-3-8b-chat-hf"  # $0.20 per 1M tokens both ways


def policy() -> LimitPolicy:
    return LimitPolicy(DEFAULT_TIERS, PriceCatalog.with_overrides({}), DEFAULT_MODELS, default_max_tokens=256,
                       reservation_cap_tokens=5000)


def completed(prompt: int, completion: int, **fields) -> LlmCompleted:
    fields = {"success": True, "provider": "together_ai", **fields}
    return LlmCompleted(request_id="r1", user_id="ann", model=MODEL, prompt_tokens=prompt,
                        completion_tokens=completion, endpoint="/v1/chat/completions", latency_ms=5, **fields)


def test_a_call_settles_to_its_tokens_and_their_price():
    assert policy().settlement(completed(1000, 500)) == (subject_key("ann", None), 1500, to_nano_usd(
        PriceCatalog.with_overrides({}).cost(MODEL, 1000, 500).usd))


def test_an_estimated_call_settles_to_its_estimate():
    key, tokens, nano = policy().settlement(completed(40, 3, usage_source="estimated"))
    assert (tokens, nano) == (43, 43 * 200)  # $0.20 per 1M tokens is 200 nano-USD a token


def test_an_estimate_of_nothing_keeps_the_reservation_instead_of_settling_to_zero():
    assert policy().settlement(completed(0, 0, usage_source="estimated")) is None


def test_a_cache_hit_settles_to_nothing_spent_so_that_a_reservation_made_for_it_comes_back():
    assert policy().settlement(completed(1000, 500, cache_hit=True)) == (subject_key("ann", None), 0, 0)


def test_a_cache_hit_is_counted_in_the_request_windows_only():
    limits = ScopeLimits(requests=5, tokens_per_minute=100, budgets=[Budget(usd=Decimal(1), period="day")])
    book = LimitsBook(limits={("user", "ann"): limits})
    request = LimitRequest(request_id="r", user_id="ann", tier="free", model=MODEL, prompt_tokens_estimate=100,
                           max_tokens=500, policy="strict")
    asked = policy().plan(request, book)
    hit = policy().plan(request.model_copy(update={"cache_hit": True}), book)
    assert (asked.reserve_tokens > 0, asked.reserve_nano > 0, len(asked.checks), asked.cache_hit) == (True, True, 3,
                                                                                                      False)
    assert (hit.reserve_tokens, hit.reserve_nano, [c.kind for c in hit.checks], hit.cache_hit) == (0, 0, ["requests"],
                                                                                                   True)
    assert (hit.requests_limit, hit.strict_limit) == (asked.requests_limit, asked.strict_limit)


def test_a_provider_that_billed_nothing_settles_to_zero():
    assert policy().settlement(completed(0, 0, success=False, error="together_ai: HTTP 500"))[1:] == (0, 0)


def test_reservation_is_prompt_plus_max_tokens_capped():
    request = LimitRequest(request_id="r", tier="free", model="m", prompt_tokens_estimate=100, max_tokens=500)
    assert reserved_tokens(request, default_completion=1024, cap=10_000) == 600
    assert reserved_tokens(request, default_completion=1024, cap=300) == 300
    no_max = LimitRequest(request_id="r", tier="free", model="m", prompt_tokens_estimate=10)
    assert reserved_tokens(no_max, default_completion=1024, cap=10_000) == 1034


def test_a_reservation_covers_every_choice():
    request = LimitRequest(request_id="r", tier="free", model="m", prompt_tokens_estimate=100, max_tokens=500,
                           choices=4)
    assert reserved_tokens(request, default_completion=1024, cap=10_000) == 2100


def test_a_reservation_is_priced_at_the_dearest_route_the_call_may_fall_back_to():
    request = LimitRequest(request_id="r", user_id="u", tier="pro", model="meta-llama/Llama-3-70b-chat-hf",
                           max_tokens=1000)
    plan = policy().plan(request)
    assert plan.reserve_tokens == 1000 and plan.reserve_nano == 10_000_000  # gpt-4o's $10/1M, not Llama's $0.90
    upstream = LimitRequest(request_id="r", user_id="u", tier="pro", model="gpt-4.1", max_tokens=1000)
    assert policy().plan(upstream).reserve_nano == 8_000_000  # a model the gateway does not map: its own price


def test_without_max_tokens_the_reservation_assumes_the_models_ceiling_else_the_default():
    models = {**DEFAULT_MODELS, "capped": ModelConfig.model_validate({
        "routes": [{"provider": "openai", "model": "gpt-4o-mini"}], "max_tokens": 64})}
    capped = LimitPolicy(DEFAULT_TIERS, PriceCatalog.with_overrides({}), models, 256, 5000)
    assert capped.plan(LimitRequest(request_id="r", tier="pro", model="capped")).reserve_tokens == 64
    assert capped.plan(LimitRequest(request_id="r", tier="pro", model="gpt-4o")).reserve_tokens == 256


def test_settlement_prices_what_answered_and_every_billed_attempt():
    fallback = completed(1000, 500, provider="openai", served_model="gpt-4o-mini", billed_attempts=[
        BilledAttempt(provider="together_ai", served_model=MODEL, prompt_tokens=1000)])
    key, tokens, nano = policy().settlement(fallback)
    assert tokens == 2500
    assert nano == to_nano_usd(PriceCatalog.with_overrides({}).cost_of(fallback).usd) == 450_000 + 200_000


def test_caller_keys_share_one_hash_tag_and_cannot_break_out_of_it():
    assert subject_key("42", None) == "cw:{user:42}"
    assert subject_key(None, "192.0.2.1") == "cw:{ip:192.0.2.1}"
    assert subject_key("a}b{c", None) == "cw:{user:a)b(c}"


def test_unknown_tier_is_treated_as_anonymous_and_plan_uses_tier_limits():
    policy = LimitPolicy(DEFAULT_TIERS, PriceCatalog.with_overrides({}), DEFAULT_MODELS, 1024, 32_768)
    request = LimitRequest(request_id="r", user_id="u", tier="platinum", model="meta-llama/Llama-3-8b-chat-hf",
                           max_tokens=1000, policy="strict")
    plan = policy.plan(request)
    assert (plan.requests_limit, plan.strict_limit, plan.window_ms) == (3, 1, 3_600_000)
    assert plan.reserve_nano == 600_000  # 1000 tokens at gpt-4o-mini's $0.60 per 1M, the dearest route
    reading = CounterReading(allowed=False, limited_by="strict", limit=1, remaining=0,
                             reset_ms=1_700_000_100_400, now_ms=1_700_000_000_000)
    result = policy.decision(request, plan, reading)
    assert result.retry_after_s == 101 and result.tier == "anonymous" and result.reserved_usd == Decimal(0)
    assert result.reason == "Anonymous tier limit: 1 long-form LLM requests per hour. Upgrade for more."
