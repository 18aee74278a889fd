"""The cost use case: record a batch of completions exactly once, keep rollups current, claim the
alerts the new spend makes due, then publish claimed alerts (an outbox, so none is lost)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from decimal import Decimal
from typing import Protocol

from prometheus_client import Counter, Histogram

from services.cost.budgets import BudgetWatch, SpendKey, budget_watches, lock_names, scope_spend_deltas
from services.cost.rollups import RollupDelta, RollupKey, UsageRecord, bucket_start, price_events, rollup_deltas
from services.cost.spend_metrics import SPEND, SPEND_LABELS
from services.cost.thresholds import (
    AlertClaim,
    SpendTotal,
    budget_alerts,
    projection_alert,
    threshold_alerts,
    unpriced_model_alert,
)
from shared.events import Alert, LlmCompleted, utc_now
from shared.limits import Scope, ScopeLimits
from shared.metric_labels import BoundedLabel
from shared.policy import Thresholds
from shared.pricing import PriceCatalog

log = logging.getLogger(__name__)

RECORDED = Counter("costwarden_cost_events_recorded_total", "llm.completed events added to the ledger")
DUPLICATES = Counter("costwarden_cost_events_duplicate_total", "llm.completed events already in the ledger")
UNPRICED = Counter("costwarden_cost_unpriced_events_total", "Events priced at the fallback price: a provider's "
                   "model with no price (provider/model)", ["model"])
ESTIMATED = Counter("costwarden_cost_estimated_usage_total",
                    "Events recorded with estimated usage (the provider sent none)", ["model"])
ALERTS = Counter("costwarden_cost_alerts_claimed_total", "Cost alerts claimed (each fires once)")
BATCH_SECONDS = Histogram("costwarden_cost_batch_seconds", "Time to record one batch")
TOKENS = Counter("costwarden_tokens_total", "Provider tokens recorded in the ledger (committed batches only; cache "
                 "hits are in costwarden_cache_hit_tokens_total)", [*SPEND_LABELS, "kind"])
HIT_TOKENS = Counter("costwarden_cache_hit_tokens_total", "Tokens of the cached answers the gateway's response cache "
                     "gave (no provider was called)", ["model", "kind"])
MODEL, SERVED_MODEL = BoundedLabel(200), BoundedLabel(200)
PROVIDER, ENDPOINT, TIER = BoundedLabel(20), BoundedLabel(50), BoundedLabel(20)


def count_spend(records: Sequence[UsageRecord]) -> None:
    """Spend and provider tokens by model, the provider and model that answered, endpoint and tier; cache
    hits' tokens by model apart."""
    for record in records:
        event = record.event
        labels = (MODEL(event.model), PROVIDER(event.provider), SERVED_MODEL(event.answered_by),
                  ENDPOINT(event.endpoint), TIER(event.tier))
        SPEND.add(labels, record.cost)
        if event.cache_hit:
            SPEND.add_saved(labels[0], record.saved)
            HIT_TOKENS.labels(labels[0], "prompt").inc(event.total_prompt_tokens)
            HIT_TOKENS.labels(labels[0], "completion").inc(event.completion_tokens)
        else:
            TOKENS.labels(*labels, "prompt").inc(event.total_prompt_tokens)
            TOKENS.labels(*labels, "completion").inc(event.completion_tokens)
        for unpriced in record.unpriced:
            UNPRICED.labels(SERVED_MODEL(unpriced)).inc()
        if event.usage_source == "estimated":
            ESTIMATED.labels(labels[0]).inc()


class LedgerTransaction(Protocol):
    async def add_usage(self, records: Sequence[UsageRecord]) -> list[UsageRecord]:
        """Store the records whose request id was never stored; return those."""
        ...

    async def add_rollups(self, deltas: Sequence[tuple[RollupKey, RollupDelta]]) -> list[SpendTotal]:
        """Add the deltas; return the new totals that thresholds watch."""
        ...

    async def add_scope_spend(self, deltas: Sequence[tuple[SpendKey, int, Decimal]]) -> None:
        """Add to the spend per key, user and team per quarter hour."""
        ...

    async def budget_totals(self, watches: Sequence[BudgetWatch], lock: Sequence[str]) -> list[Decimal]:
        """Lock the named scopes until the batch ends (one batch at a time per scope), then each watched
        period's spend."""
        ...

    async def claim_alerts(self, claims: Sequence[AlertClaim]) -> int:
        """Claim each alert's key; one already claimed, by anyone, ever, is dropped."""
        ...


class UsageLedger(Protocol):
    async def ensure_partitions(self, records: Sequence[UsageRecord]) -> None: ...

    def transaction(self) -> AbstractAsyncContextManager[LedgerTransaction]:
        """One batch, all or nothing."""
        ...

    async def publish_unpublished(self, publish: Callable[[Alert], Awaitable[None]]) -> int:
        """Publish claimed alerts not yet published, each once; how many."""
        ...


def alerts_due(fresh: Sequence[UsageRecord], totals: Sequence[SpendTotal], thresholds: Thresholds,
               now: datetime, fallback: str) -> list[AlertClaim]:
    claims = [claim for total in totals for claim in threshold_alerts(total, thresholds)]
    this_month = bucket_start("month", now)
    for total in totals:
        if total.scope == "all" and total.period == "month" and total.bucket == this_month:
            projection = projection_alert(total.cost, now, thresholds)
            if projection:
                claims.append(projection)
    for model, day in sorted({(model, bucket_start("day", r.at)) for r in fresh for model in r.unpriced}):
        claims.append(unpriced_model_alert(model, day, fallback))
    return claims


ScopeLimitsMap = Mapping[tuple[Scope, str], ScopeLimits]


class CostRecorder:
    def __init__(self, ledger: UsageLedger, catalog: PriceCatalog, thresholds: Thresholds,
                 publish_alert: Callable[[Alert], Awaitable[None]], clock: Callable[[], datetime] = utc_now,
                 limits: Callable[[], ScopeLimitsMap] = dict) -> None:
        """`limits`: the limits administrators set now (their budgets' soft thresholds raise alerts)."""
        self.ledger = ledger
        self.catalog = catalog
        self.thresholds = thresholds
        self.publish_alert = publish_alert
        self.clock = clock
        self.limits = limits
        SPEND.set_thresholds(thresholds)
        fallback = catalog.fallback
        self.fallback_text = f"${fallback.input}/${fallback.output} per 1M tokens"

    async def record(self, events: Sequence[LlmCompleted]) -> None:
        with BATCH_SECONDS.time():
            records = price_events(events, self.catalog)
            await self.ledger.ensure_partitions(records)
            claimed = 0
            async with self.ledger.transaction() as tx:
                fresh = await tx.add_usage(records)
                if fresh:
                    now = self.clock()
                    totals = await tx.add_rollups(rollup_deltas(fresh))
                    await tx.add_scope_spend(scope_spend_deltas(fresh))
                    claims = alerts_due(fresh, totals, self.thresholds, now, self.fallback_text)
                    watches = budget_watches(fresh, self.limits(), now)
                    if watches:
                        spent = await tx.budget_totals(watches, lock_names(watches))
                        claims += [claim for watch, total in zip(watches, spent, strict=True)
                                   for claim in budget_alerts(watch, total)]
                    claimed = await tx.claim_alerts(claims)
        RECORDED.inc(len(fresh))
        DUPLICATES.inc(len(events) - len(fresh))
        count_spend(fresh)
        ALERTS.inc(claimed)
        if claimed:
            await self.publish_pending()

    async def publish_pending(self) -> int:
        """Publish claimed alerts not yet published (ours, or left by a replica that died)."""
        return await self.ledger.publish_unpublished(self.publish_alert)
