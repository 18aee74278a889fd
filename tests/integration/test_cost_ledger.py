"""The cost use case on a real Postgres: exact arithmetic, idempotency, rollups, thresholds, the
projection, unpriced models and the SQL functions of the original system."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import pytest

from services.cost.pg_usage_ledger import PgUsageLedger
from services.cost.recorder import CostRecorder
from shared.events import Alert, LlmCompleted
from shared.policy import Levels, Thresholds
from shared.pricing import DEFAULT_PRICES, PriceCatalog
from tests.conftest import unique

pytestmark = pytest.mark.adapter

WINDOW = datetime(2026, 3, 10, 14, 5, tzinfo=UTC)


def event(model: str = "meta-llama/Llama-3-70b-chat-hf", prompt: int = 1000, completion: int = 1000,
          at: datetime = WINDOW, user: str | None = "alice", request_id: str | None = None, **extra) -> LlmCompleted:
    request_id = request_id or unique("req")
    fields = dict(id=request_id, request_id=request_id, user_id=user, provider="together_ai", model=model,
                  prompt_tokens=prompt, completion_tokens=completion, endpoint="/v1/chat/completions",
                  success=True, latency_ms=100, occurred_at=at)
    return LlmCompleted(**{**fields, **extra})


class Sink:
    def __init__(self) -> None:
        self.alerts: list[Alert] = []

    async def __call__(self, alert: Alert) -> None:
        self.alerts.append(alert)


@pytest.fixture
async def pool(fresh_database):
    pool = await asyncpg.create_pool(fresh_database, min_size=1, max_size=8)
    yield pool
    await pool.close()


def recorder(pool, thresholds: Thresholds | None = None, clock=lambda: WINDOW) -> tuple[CostRecorder, Sink]:
    sink = Sink()
    return CostRecorder(PgUsageLedger(pool), PriceCatalog.with_overrides({}), thresholds or Thresholds(), sink,
                        clock=clock), sink


async def test_exact_cost_for_every_default_model(pool):
    rec, _ = recorder(pool)
    events = [event(model=model, prompt=123_457, completion=98_765, cached_prompt_tokens=1000)
              for model in DEFAULT_PRICES]
    await rec.record(events)
    rows = {r["model"]: r for r in await pool.fetch("SELECT model, cost, priced FROM llm_usage")}
    for model, price in DEFAULT_PRICES.items():
        cached = 1000 if price.cached_input is not None else 0
        expected = ((123_457 - cached) * price.input + cached * (price.cached_input or 0) + 98_765 * price.output
                    ) / Decimal(1_000_000)
        assert rows[model]["cost"] == expected, model
        assert rows[model]["priced"] is True
    # the seed's example: 150 + 300 tokens of Llama-3-70b at $0.90 cost $0.000405
    await rec.record([event(prompt=150, completion=300, request_id="seed-example")])
    assert await pool.fetchval("SELECT cost FROM llm_usage WHERE request_id = 'seed-example'") == Decimal("0.000405")


async def test_a_request_id_counts_once_whatever_the_redelivery(pool):
    rec, _ = recorder(pool)
    first = event(request_id="dup-1")
    await rec.record([first, first])
    await rec.record([first])
    # re-published later with another timestamp (beyond any JetStream de-duplication window)
    await rec.record([event(request_id="dup-1", at=WINDOW + timedelta(days=40))])
    assert await pool.fetchval("SELECT count(*) FROM llm_usage WHERE request_id = 'dup-1'") == 1
    assert await pool.fetchval(
        "SELECT requests FROM llm_cost_rollups WHERE period='month' AND dimension='all'") == 1


async def test_rollups_by_period_and_dimension(pool):
    rec, _ = recorder(pool)
    await rec.record([
        event(user="alice", tags={"feature": "search"}),
        event(user="bob", model="meta-llama/Llama-3-8b-chat-hf", tags={"feature": "search", "team": "growth"}),
        event(user="alice", at=WINDOW + timedelta(hours=1)),
    ])
    rows = await pool.fetch("SELECT period, bucket, dimension, key, requests, cost FROM llm_cost_rollups")
    index = {(r["period"], r["bucket"], r["dimension"], r["key"]): (r["requests"], r["cost"]) for r in rows}
    hour = WINDOW.replace(minute=0)
    day = WINDOW.replace(hour=0, minute=0)
    assert index[("hour", hour, "all", "")] == (2, Decimal("0.0018") + Decimal("0.0004"))
    assert index[("hour", hour + timedelta(hours=1), "all", "")] == (1, Decimal("0.0018"))
    assert index[("day", day, "user", "alice")] == (2, Decimal("0.0036"))
    assert index[("day", day, "model", "meta-llama/Llama-3-8b-chat-hf")] == (1, Decimal("0.0004"))
    assert index[("month", day.replace(day=1), "tag", "feature=search")] == (2, Decimal("0.0022"))
    assert index[("month", day.replace(day=1), "tag", "team=growth")] == (1, Decimal("0.0004"))
    assert index[("day", day, "endpoint", "/v1/chat/completions")][0] == 3


def cost_of(n_tokens_each_side: int) -> Decimal:
    return Decimal(2 * n_tokens_each_side) * Decimal("0.90") / Decimal(1_000_000)


async def test_hourly_thresholds_fire_once_per_level_and_window(pool):
    thresholds = Thresholds(hourly=Levels(warning=Decimal("1"), critical=Decimal("5")),
                            daily=Levels(), monthly=Levels(), user_daily=Levels())
    rec, sink = recorder(pool, thresholds)
    # $0.90 per call (500k tokens each side at $0.90 per 1M)
    for _ in range(8):
        await rec.record([event(prompt=500_000, completion=500_000, user=None)])
    await rec.record([event(prompt=500_000, completion=500_000, user=None, at=WINDOW + timedelta(hours=1))
                      for _ in range(2)])
    keys = [a.key for a in sink.alerts]
    assert len(keys) == len(set(keys)) == 3, keys
    warning, critical, next_hour = sink.alerts
    assert warning.severity == "warning" and warning.actual == Decimal("1.8")
    assert warning.text == "WARNING: Hourly LLM cost ($1.80) exceeded warning threshold ($1)"
    assert critical.severity == "critical" and critical.actual == Decimal("5.4") and critical.overage == Decimal("0.4")
    assert critical.text == "CRITICAL: Hourly LLM cost ($5.40) exceeded critical threshold ($5)"
    assert (critical.period, critical.threshold, critical.window) == ("hourly", Decimal(5), "2026-03-10T14:00:00+00:00")
    assert next_hour.severity == "warning" and next_hour.window == "2026-03-10T15:00:00+00:00"
    stored = await pool.fetch("SELECT alert_key, published_at FROM cost_alerts")
    assert len(stored) == 3 and all(r["published_at"] for r in stored)


async def test_concurrent_replicas_claim_each_alert_once(pool):
    thresholds = Thresholds(hourly=Levels(warning=Decimal("1"), critical=Decimal("5")), daily=Levels(),
                            monthly=Levels(), user_daily=Levels())
    replicas = [recorder(pool, thresholds) for _ in range(3)]
    batches = [[event(prompt=500_000, completion=500_000, user=None) for _ in range(3)] for _ in range(6)]
    await asyncio.gather(*(replicas[i % 3][0].record(batch) for i, batch in enumerate(batches)))
    alerts = [a for _, sink in replicas for a in sink.alerts]
    assert sorted(a.severity for a in alerts) == ["critical", "warning"]
    assert await pool.fetchval("SELECT cost FROM llm_cost_rollups WHERE period='hour' AND dimension='all'") == \
        Decimal("16.2")


async def test_daily_monthly_and_per_user_thresholds(pool):
    thresholds = Thresholds(hourly=Levels(), daily=Levels(warning=Decimal("2"), critical=Decimal("3")),
                            monthly=Levels(warning=Decimal("4")), user_daily=Levels(warning=Decimal("1.5")))
    rec, sink = recorder(pool, thresholds)
    for hour in range(5):  # $0.90 an hour for alice, same day
        await rec.record([event(prompt=500_000, completion=500_000, at=WINDOW + timedelta(hours=hour % 3))])
    await rec.record([event(prompt=500_000, completion=500_000, user="bob", at=WINDOW + timedelta(days=1))])
    texts = sorted(a.text for a in sink.alerts)
    assert texts == sorted([
        "WARNING: Daily LLM cost for user alice ($1.80) exceeded warning threshold ($1.50)",
        "WARNING: Daily LLM cost ($2.70) exceeded warning threshold ($2)",
        "CRITICAL: Daily LLM cost ($3.60) exceeded critical threshold ($3)",
        "WARNING: Monthly LLM cost ($4.50) exceeded warning threshold ($4)",
    ])


async def test_projected_monthly_spend_warns_once_a_day(pool):
    thresholds = Thresholds(hourly=Levels(), daily=Levels(), monthly=Levels(critical=Decimal("100")),
                            user_daily=Levels())
    now = [datetime(2026, 4, 10, 12, tzinfo=UTC)]  # 9.5 of 30 days gone
    rec, sink = recorder(pool, thresholds, clock=lambda: now[0])
    spend = event(prompt=20_000_000, completion=20_000_000, at=now[0], user=None)  # $36
    await rec.record([spend])
    await rec.record([event(prompt=1000, completion=1000, at=now[0], user=None)])
    [alert] = sink.alerts
    assert alert.severity == "warning" and alert.title == "LLM Cost Projection"
    assert alert.actual.quantize(Decimal("0.01")) == Decimal("113.68")
    assert "projected to reach $113.68 by 2026-04-30" in alert.text and "($100)" in alert.text
    now[0] += timedelta(days=1)
    await rec.record([event(prompt=1000, completion=1000, at=now[0], user=None)])
    assert len(sink.alerts) == 2 and sink.alerts[1].key.endswith("2026-04-11")


async def test_unpriced_models_use_the_fallback_rate_and_warn_once_a_day(pool):
    rec, sink = recorder(pool)
    for _ in range(3):
        await rec.record([event(model="brand-new-model", prompt=1_000_000, completion=0)])
    rows = await pool.fetch("SELECT cost, priced FROM llm_usage WHERE model = 'brand-new-model'")
    assert [(r["cost"], r["priced"]) for r in rows] == [(Decimal("10"), False)] * 3
    unpriced = [a for a in sink.alerts if a.key.startswith("cost:unpriced:")]
    assert len(unpriced) == 1
    assert unpriced[0].text.startswith("WARNING: model together_ai/brand-new-model has no price")


async def test_the_original_sql_functions(pool):
    now = datetime.now(UTC)
    rec, _ = recorder(pool, clock=lambda: now)
    latencies = list(range(10, 1010, 10))  # 100 calls, latencies 10..1000 ms
    events = [event(prompt=1000, completion=1000, at=now, user="carol" if i % 2 else "dave",
                    latency_ms=latency, success=i % 10 != 0, request_id=f"fn-{i}")
              for i, latency in enumerate(latencies)]
    await rec.record(events)
    per_call = Decimal("0.0018")
    assert await pool.fetchval("SELECT get_hourly_llm_cost()") == 100 * per_call
    assert await pool.fetchval("SELECT get_daily_llm_cost()") == 100 * per_call
    assert await pool.fetchval("SELECT get_daily_llm_cost('carol')") == 50 * per_call
    assert await pool.fetchval("SELECT get_daily_llm_cost('nobody')") == 0
    assert await pool.fetchval("SELECT get_monthly_llm_cost()") == 100 * per_call
    [stats] = await pool.fetch("SELECT * FROM get_llm_usage_stats(now() - interval '1 hour', now() + interval '1 hour')")
    assert stats["model"] == "meta-llama/Llama-3-70b-chat-hf"
    assert (stats["total_requests"], stats["successful_requests"], stats["success_rate"]) == (100, 90, Decimal("90.00"))
    assert (stats["total_prompt_tokens"], stats["total_tokens"], stats["total_cost"]) == (100_000, 200_000, 100 * per_call)
    assert stats["avg_latency_ms"] == Decimal("505.00")
    assert stats["p50_latency_ms"] == pytest.approx(505.0)
    assert stats["p95_latency_ms"] == pytest.approx(950.5)
    assert stats["p99_latency_ms"] == pytest.approx(990.1)


async def test_retention_drops_whole_old_partitions_only(pool):
    rec, _ = recorder(pool)
    now = datetime.now(UTC)
    old, recent = now - timedelta(days=200), now - timedelta(days=1)
    await rec.record([event(at=old, request_id="old-1"), event(at=recent, request_id="recent-1")])
    ledger = PgUsageLedger(pool)
    dropped = await ledger.cleanup(90)
    assert dropped == [old.strftime("llm_usage_%Y_%m")]
    assert [r["request_id"] for r in await pool.fetch("SELECT request_id FROM llm_usage")] == ["recent-1"]
    assert await ledger.cleanup(90) == []
    # a late event for a dropped month: a replica that still believed the partition existed fails
    # once (the batch is redelivered), then creates it again and records the event
    with pytest.raises(asyncpg.CheckViolationError):
        await rec.record([event(at=old, request_id="old-2")])
    await rec.record([event(at=old, request_id="old-2")])
    assert await pool.fetchval("SELECT count(*) FROM llm_usage WHERE request_id = 'old-2'") == 1
