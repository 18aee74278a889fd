"""The cost recorder with an in-memory fake of its ledger: a batch is recorded once, rolled up, and the
alerts it makes due are claimed and published."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from decimal import Decimal

from prometheus_client import REGISTRY

from services.cost.recorder import SPEND_LABELS, CostRecorder
from services.cost.rollups import RollupDelta, RollupKey, UsageRecord
from services.cost.thresholds import AlertClaim, SpendTotal
from shared.events import Alert, LlmCompleted
from shared.policy import Levels, Thresholds
from shared.pricing import PriceCatalog

NOW = datetime(2026, 11, 28, 10, 30, tzinfo=UTC)


class FakeLedger:
    def __init__(self) -> None:
        self.ids: set[str] = set()
        self.totals: dict[RollupKey, Decimal] = {}
        self.claimed: dict[str, Alert] = {}
        self.published: set[str] = set()

    async def ensure_partitions(self, records: Sequence[UsageRecord]) -> None: ...

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[FakeLedger]:
        yield self

    async def add_usage(self, records: Sequence[UsageRecord]) -> list[UsageRecord]:
        fresh = [r for r in records if r.request_id not in self.ids]
        self.ids.update(r.request_id for r in fresh)
        return fresh

    async def add_rollups(self, deltas: Sequence[tuple[RollupKey, RollupDelta]]) -> list[SpendTotal]:
        for key, delta in deltas:
            self.totals[key] = self.totals.get(key, Decimal(0)) + delta.cost
        return [SpendTotal("all", period, bucket, self.totals[(period, bucket, dimension, key)])
                for (period, bucket, dimension, key), _ in deltas if dimension == "all"]

    async def claim_alerts(self, claims: Sequence[AlertClaim]) -> int:
        new = [c for c in claims if c.alert.key not in self.claimed]
        self.claimed.update((c.alert.key, c.alert) for c in new)
        return len(new)

    async def publish_unpublished(self, publish: Callable[[Alert], Awaitable[None]]) -> int:
        due = [a for key, a in self.claimed.items() if key not in self.published]
        for alert in due:
            await publish(alert)
            self.published.add(alert.key)
        return len(due)


def spend(request_id: str, tokens: int) -> LlmCompleted:
    return LlmCompleted(request_id=request_id, user_id="ann", provider="together_ai",
                        model="meta-llama/Llama-3-70b-chat-hf", prompt_tokens=tokens, completion_tokens=0,
                        endpoint="/v1/chat/completions", success=True, latency_ms=5, occurred_at=NOW)


async def test_a_batch_is_recorded_once_and_crossing_a_threshold_publishes_one_alert():
    ledger, published = FakeLedger(), []

    async def publish(alert: Alert) -> None:
        published.append(alert.key)

    thresholds = Thresholds(hourly=Levels(warning=Decimal("1")), daily=Levels(), monthly=Levels(), user_daily=Levels())
    recorder = CostRecorder(ledger, PriceCatalog.with_overrides({}), thresholds, publish, clock=lambda: NOW)
    await recorder.record([spend("a", 600_000), spend("a", 600_000)])  # $0.54, the duplicate once
    assert ledger.ids == {"a"} and published == []
    await recorder.record([spend("b", 600_000), spend("a", 600_000)])  # $1.08 this hour: warning due
    await recorder.record([spend("c", 600_000)])  # still past it: no second alert for the window
    assert published == ["cost:all:hour:2026-11-28T10:00:00+00:00:warning"]
    assert ledger.totals[("hour", datetime(2026, 11, 28, 10, tzinfo=UTC), "all", "")] == Decimal("1.62")


async def test_spend_and_tokens_are_counted_once_per_recorded_event():
    async def publish(alert: Alert) -> None: ...

    labels = dict(zip(SPEND_LABELS, ("meta-llama/Llama-3-70b-chat-hf", "together_ai", "meta-llama/Llama-3-70b-chat-hf",
                                      "/v1/chat/completions", "pro"), strict=True))

    def counted() -> tuple[float, float]:
        return (float(REGISTRY.get_sample_value("costwarden_spend_usd_total", labels) or 0),
                REGISTRY.get_sample_value("costwarden_tokens_total", {**labels, "kind": "prompt"}) or 0.0)

    recorder = CostRecorder(FakeLedger(), PriceCatalog.with_overrides({}), Thresholds(), publish, clock=lambda: NOW)
    before = counted()
    tiered = spend("t1", 600_000).model_copy(update={"tier": "pro"})
    await recorder.record([tiered, tiered])  # $0.54, the duplicate once
    usd, tokens = counted()
    assert (round(usd - before[0], 6), tokens - before[1]) == (0.54, 600_000)
    assert REGISTRY.get_sample_value("costwarden_cost_alert_threshold_usd",
                                     {"period": "hour", "severity": "critical"}) == 50.0
