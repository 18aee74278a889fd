"""Pricing completions (shared/pricing.py) into usage records, and folding them into the spend rollups
(per UTC hour, day and month, by dimension). Pure domain code: no I/O, Decimal only; the ledger in
Postgres is pg_usage_ledger.py."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import NamedTuple

from shared.events import LlmCompleted
from shared.pricing import PriceCatalog

PERIODS = ("hour", "day", "month")


def bucket_start(period: str, at: datetime) -> datetime:
    """Start of the UTC hour, day or month that contains `at`."""
    at = at.replace(minute=0, second=0, microsecond=0)
    if period == "hour":
        return at
    at = at.replace(hour=0)
    return at if period == "day" else at.replace(day=1)


@dataclass(frozen=True)
class UsageRecord:
    event: LlmCompleted
    cost: Decimal
    priced: bool
    unpriced: tuple[str, ...] = ()  # provider/model of each part charged the fallback price
    saved: Decimal = Decimal(0)  # a cache hit's: what the provider would have been paid

    @property
    def request_id(self) -> str:
        return self.event.request_id

    @property
    def at(self) -> datetime:
        return self.event.occurred_at


def price_events(events: Iterable[LlmCompleted], catalog: PriceCatalog) -> list[UsageRecord]:
    """One record per request id (the first seen wins within a batch), priced for what answered. A cache
    hit costs nothing: its price is what it saved, and a model it prices at the fallback is no provider's
    unpriced charge."""
    records: dict[str, UsageRecord] = {}
    for event in events:
        if event.request_id in records:
            continue
        cost = catalog.cost_of(event)
        if event.cache_hit:
            records[event.request_id] = UsageRecord(event, Decimal(0), cost.priced, (), cost.usd)
        else:
            records[event.request_id] = UsageRecord(event, cost.usd, cost.priced, cost.unpriced)
    return list(records.values())


class RollupKey(NamedTuple):
    """One row of `llm_cost_rollups`: the period (hour, day, month) starting at `bucket`, and one value
    (`key`) of a dimension (all, model, served_model, endpoint, user, key, tag)."""

    period: str
    bucket: datetime
    dimension: str
    key: str


@dataclass
class RollupDelta:
    """Tokens are the providers': a cache hit's are not counted (no provider was called)."""

    requests: int = 0
    successes: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: Decimal = Decimal(0)
    latency_ms_sum: int = 0
    estimated_requests: int = 0
    estimated_cost: Decimal = Decimal(0)
    cache_hits: int = 0
    saved: Decimal = Decimal(0)

    def add(self, record: UsageRecord) -> None:
        event = record.event
        self.requests += 1
        self.successes += int(event.success)
        if not event.cache_hit:
            self.prompt_tokens += event.total_prompt_tokens
            self.completion_tokens += event.completion_tokens
        self.cost += record.cost
        self.latency_ms_sum += event.latency_ms
        if event.usage_source == "estimated":
            self.estimated_requests += 1
            self.estimated_cost += record.cost
        self.cache_hits += int(event.cache_hit)
        self.saved += record.saved

    def merge(self, other: RollupDelta) -> None:
        self.requests += other.requests
        self.successes += other.successes
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.cost += other.cost
        self.latency_ms_sum += other.latency_ms_sum
        self.estimated_requests += other.estimated_requests
        self.estimated_cost += other.estimated_cost
        self.cache_hits += other.cache_hits
        self.saved += other.saved


def dimensions_of(event: LlmCompleted) -> list[tuple[str, str]]:
    dims = [("all", ""), ("model", event.model), ("served_model", event.answered_by), ("endpoint", event.endpoint)]
    if event.user_id:
        dims.append(("user", event.user_id))
    if event.api_key_id:
        dims.append(("key", str(event.api_key_id)))
    if event.team_id:
        dims.append(("team", event.team_id))
    dims.extend(("tag", f"{name}={value}") for name, value in sorted(event.tags.items()))
    return dims


def rollup_deltas(records: Sequence[UsageRecord]) -> list[tuple[RollupKey, RollupDelta]]:
    """The increments a batch makes to every rollup row, sorted so that concurrent writers lock rows
    in the same order (no deadlocks)."""
    by_hour: dict[datetime, dict[tuple[str, str], RollupDelta]] = defaultdict(lambda: defaultdict(RollupDelta))
    for record in records:
        per_dimension = by_hour[bucket_start("hour", record.at)]
        for dimension in dimensions_of(record.event):
            per_dimension[dimension].add(record)
    deltas: dict[RollupKey, RollupDelta] = defaultdict(RollupDelta)
    for hour, per_dimension in by_hour.items():
        for period in PERIODS:
            bucket = bucket_start(period, hour)
            for (dimension_name, key), delta in per_dimension.items():
                deltas[RollupKey(period, bucket, dimension_name, key)].merge(delta)
    return sorted(deltas.items(), key=lambda item: item[0])
