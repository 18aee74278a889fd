"""Settlement: a finished call replaces its reservation with what it really used."""

from __future__ import annotations

from services.limiter.policy import LimitPolicy, subject_key
from shared.events import LlmCompleted
from shared.pricing import PriceCatalog, to_nano_usd
from shared.settings import DEFAULT_TIERS

MODEL = "meta-llama/Llama-3-8b-chat-hf"  # $0.20 per 1M tokens both ways


def policy() -> LimitPolicy:
    return LimitPolicy(DEFAULT_TIERS, PriceCatalog.with_overrides({}), default_max_tokens=256,
                       reservation_cap_tokens=5000)


def completed(prompt: int, completion: int, **fields) -> LlmCompleted:
    fields = {"success": True, **fields}
    return LlmCompleted(request_id="r1", user_id="ann", provider="together_ai", model=MODEL, prompt_tokens=prompt,
                        completion_tokens=completion, endpoint="/v1/chat/completions", latency_ms=5, **fields)


def test_a_call_settles_to_its_tokens_and_their_price():
    assert policy().settlement(completed(1000, 500)) == (subject_key("ann", None), 1500, to_nano_usd(
        PriceCatalog.with_overrides({}).cost(MODEL, 1000, 500).usd))


def test_an_estimated_call_settles_to_its_estimate():
    key, tokens, nano = policy().settlement(completed(40, 3, usage_source="estimated"))
    assert (tokens, nano) == (43, 43 * 200)  # $0.20 per 1M tokens is 200 nano-USD a token


def test_an_estimate_of_nothing_keeps_the_reservation_instead_of_settling_to_zero():
    assert policy().settlement(completed(0, 0, usage_source="estimated")) is None


def test_a_provider_that_billed_nothing_settles_to_zero():
    assert policy().settlement(completed(0, 0, success=False, error="together_ai: HTTP 500"))[1:] == (0, 0)
