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
        self.scope_spend: dict[tuple[str, str, datetime], Decimal] = {}
        self.locked: list[list[str]] = []

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

    async def add_scope_spend(self, deltas) -> None:
        for key, _, cost in deltas:
            self.scope_spend[key] = self.scope_spend.get(key, Decimal(0)) + cost

    async def budget_totals(self, watches, lock) -> list[Decimal]:
        self.locked.append(list(lock))
        return [sum((cost for (scope, scope_id, at), cost in self.scope_spend.items()
                     if (scope, scope_id) == (w.scope, w.scope_id) and at in w.span), Decimal(0)) for w in watches]

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


async def test_a_cache_hits_tokens_are_counted_apart_from_the_providers_and_raise_no_unpriced_alert():
    published: list[str] = []

    async def publish(alert: Alert) -> None:
        published.append(alert.key)

    model = "some-unpriced-model"
    labels = dict(zip(SPEND_LABELS, (model, "together_ai", model, "/v1/chat/completions", "none"), strict=True))

    def counted() -> tuple[float, float, float]:
        return (REGISTRY.get_sample_value("costwarden_tokens_total", {**labels, "kind": "prompt"}) or 0.0,
                REGISTRY.get_sample_value("costwarden_cache_hit_tokens_total", {"model": model, "kind": "prompt"})
                or 0.0,
                REGISTRY.get_sample_value("costwarden_cost_unpriced_events_total", {"model": f"together_ai/{model}"})
                or 0.0)

    recorder = CostRecorder(FakeLedger(), PriceCatalog.with_overrides({}), Thresholds(), publish, clock=lambda: NOW)
    before = counted()
    hit = spend("hit-1", 1000).model_copy(update={"model": model, "cache_hit": True})
    await recorder.record([hit])
    provider, hits, unpriced = counted()
    assert (provider - before[0], hits - before[1], unpriced - before[2]) == (0, 1000, 0)
    assert published == []
    await recorder.record([hit.model_copy(update={"request_id": "paid-1", "cache_hit": False})])
    assert published == [f"cost:unpriced:together_ai/{model}:2026-11-28"] and counted()[0] - provider == 1000


def team_call(request_id: str, tokens: int, at: datetime = NOW) -> LlmCompleted:
    return LlmCompleted(request_id=request_id, user_id="ann", team_id="research", api_key_id=7,
                        provider="together_ai", model="meta-llama/Llama-3-70b-chat-hf", prompt_tokens=tokens,
                        completion_tokens=0, endpoint="/v1/chat/completions", success=True, latency_ms=5,
                        occurred_at=at)


async def test_each_soft_threshold_of_a_team_budget_alerts_once_per_period_saying_who_how_much_and_when_it_resets():
    from shared.limits import Budget, ScopeLimits

    ledger, published = FakeLedger(), []

    async def publish(alert: Alert) -> None:
        published.append(alert)

    monthly = Budget(usd=Decimal("10"), period="month", timezone="Europe/Berlin")
    limits = {("team", "research"): ScopeLimits(budgets=(monthly,), soft=(Decimal("0.5"), Decimal("0.8")))}
    recorder = CostRecorder(ledger, PriceCatalog.with_overrides({}), Thresholds(), publish, clock=lambda: NOW,
                            limits=lambda: limits)
    await recorder.record([team_call("a", 4_000_000)])  # $3.60 of $10 (Llama 3 70B: $0.90 per 1M)
    assert published == [] and ledger.locked == [["team:research"]]
    await recorder.record([team_call("b", 2_000_000), team_call("c", 100_000)])  # $5.49: 50 % crossed
    await recorder.record([team_call("d", 3_000_000)])  # $8.19: 80 %
    await recorder.record([team_call("e", 1_000_000)])  # $9.09: nothing new
    assert [a.key for a in published] == [
        "budget:team:research:month@Europe/Berlin:2026-10-31T23:00:00+00:00:0.5",
        "budget:team:research:month@Europe/Berlin:2026-10-31T23:00:00+00:00:0.8"]
    first = published[0]
    assert (first.scope, first.threshold, first.actual, first.severity) == ("team:research", Decimal("5.0"),
                                                                          Decimal("5.49"), "warning")
    assert first.resets_at == datetime(2026, 11, 30, 23, tzinfo=UTC)
    assert first.text == ("WARNING: team research has spent $5.49 of its $10 LLM budget per month (Europe/Berlin): "
                          "54.9 %, past the 50 % threshold; it resets at 2026-12-01T00:00:00+01:00")
    december = datetime(2026, 12, 1, 0, 30, tzinfo=UTC)  # a new month in Berlin: the thresholds count afresh
    recorder.clock = lambda: december
    await recorder.record([team_call("f", 6_000_000, at=december)])
    assert published[-1].key == "budget:team:research:month@Europe/Berlin:2026-11-30T23:00:00+00:00:0.5"
