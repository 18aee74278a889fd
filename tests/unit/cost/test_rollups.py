"""Folding priced completions into rollups."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from services.cost.rollups import price_events, rollup_deltas
from shared.events import BilledAttempt, LlmCompleted
from shared.pricing import PriceCatalog

AT = datetime(2026, 11, 28, 10, 15, tzinfo=UTC)
MODEL = "meta-llama/Llama-3-70b-chat-hf"  # $0.90 per 1M tokens both ways


def completed(request_id: str, tokens: int, source: str = "provider", **fields) -> LlmCompleted:
    fields = {"provider": "together_ai", **fields}
    return LlmCompleted(request_id=request_id, user_id="ann", model=MODEL, prompt_tokens=tokens, completion_tokens=0,
                        endpoint="/v1/chat/completions", success=True, latency_ms=10, usage_source=source,
                        occurred_at=AT, **fields)


def test_every_period_and_dimension_gets_the_batch_and_its_estimated_share():
    records = price_events([completed("a", 1_000_000), completed("b", 2_000_000, "estimated", tags={"team": "x"}),
                            completed("a", 5)], PriceCatalog.with_overrides({}))
    deltas = dict(rollup_deltas(records))
    hour = datetime(2026, 11, 28, 10, tzinfo=UTC)
    overall = deltas[("hour", hour, "all", "")]
    assert (overall.requests, overall.cost) == (2, Decimal("2.70"))  # the duplicate "a" counts once
    assert (overall.estimated_requests, overall.estimated_cost) == (1, Decimal("1.80"))
    month = deltas[("month", datetime(2026, 11, 1, tzinfo=UTC), "user", "ann")]
    assert (month.requests, month.estimated_cost) == (2, Decimal("1.80"))
    tag = deltas[("day", datetime(2026, 11, 28, tzinfo=UTC), "tag", "team=x")]
    assert (tag.requests, tag.estimated_requests) == (1, 1)
    assert [key for key, _ in rollup_deltas(records)] == sorted(deltas)  # one lock order for every writer


def test_spend_is_rolled_up_per_api_key_when_the_call_names_one():
    records = price_events([completed("a", 1_000_000, api_key_id=7), completed("b", 1_000_000, api_key_id=8),
                            completed("c", 1_000_000)], PriceCatalog.with_overrides({}))
    deltas = dict(rollup_deltas(records))
    day = datetime(2026, 11, 28, tzinfo=UTC)
    assert deltas[("day", day, "key", "7")].cost == deltas[("day", day, "key", "8")].cost == Decimal("0.90")
    assert deltas[("day", day, "user", "ann")].requests == 3  # the user's rollup has every call, keyed or not
    assert {key for (_, _, dimension, key) in deltas if dimension == "key"} == {"7", "8"}


def test_a_fallback_call_is_priced_and_rolled_up_at_the_model_that_answered():
    fallback = completed("f", 1_000_000, provider="openai", served_model="gpt-4o")  # $2.50 per 1M prompt tokens
    [record] = price_events([fallback], PriceCatalog.with_overrides({}))
    assert (record.cost, record.priced) == (Decimal("2.5"), True)
    deltas = dict(rollup_deltas([record]))
    day = datetime(2026, 11, 28, tzinfo=UTC)
    assert deltas[("day", day, "model", MODEL)].cost == deltas[("day", day, "served_model", "gpt-4o")].cost \
        == Decimal("2.5")
    assert ("day", day, "served_model", MODEL) not in deltas


def test_rollups_count_the_prompt_of_every_billed_attempt():
    timed_out_first = completed("t", 100, provider="openai", served_model="gpt-4o", billed_attempts=[
        BilledAttempt(provider="together_ai", served_model=MODEL, prompt_tokens=100)])
    [record] = price_events([timed_out_first], PriceCatalog.with_overrides({}))
    assert record.cost == Decimal("0.00025") + Decimal("0.00009")
    overall = dict(rollup_deltas([record]))[("hour", datetime(2026, 11, 28, 10, tzinfo=UTC), "all", "")]
    assert (overall.requests, overall.prompt_tokens, overall.cost) == (1, 200, record.cost)


def test_a_cache_hit_costs_nothing_and_is_rolled_up_with_what_it_saved():
    records = price_events([completed("paid", 1_000_000), completed("hit", 1_000_000, cache_hit=True)],
                           PriceCatalog.with_overrides({}))
    assert [(r.cost, r.saved) for r in records] == [(Decimal("0.90"), 0), (0, Decimal("0.90"))]
    day = dict(rollup_deltas(records))[("day", datetime(2026, 11, 28, tzinfo=UTC), "model", MODEL)]
    assert (day.requests, day.cost, day.cache_hits, day.saved) == (2, Decimal("0.90"), 1, Decimal("0.90"))


def test_a_cache_hits_tokens_are_not_a_providers_and_a_hit_at_the_fallback_price_is_no_unpriced_charge():
    unpriced = {"provider": "together_ai", "served_model": "some-unpriced-model"}
    records = price_events([completed("paid", 1000, **unpriced), completed("hit", 1000, cache_hit=True, **unpriced)],
                           PriceCatalog.with_overrides({}))
    assert [r.unpriced for r in records] == [("together_ai/some-unpriced-model",), ()]
    assert records[1].saved > 0 and not records[1].priced  # saved at the fallback price, and said so
    day = dict(rollup_deltas(records))[("day", datetime(2026, 11, 28, tzinfo=UTC), "model", MODEL)]
    assert (day.requests, day.cache_hits, day.prompt_tokens) == (2, 1, 1000)
