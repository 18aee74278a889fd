"""The ledger in Postgres: llm_usage rows, rollups and alert claims, one transaction per batch."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from decimal import Decimal

import asyncpg

from services.cost.budgets import BudgetWatch, SpendKey
from services.cost.rollups import RollupDelta, RollupKey, UsageRecord, bucket_start
from services.cost.thresholds import AlertClaim, SpendTotal
from shared.events import Alert

PARTITION_CHECK_S = 60.0

CLAIM_IDS = """
INSERT INTO llm_usage_ids (request_id, created_at)
SELECT * FROM unnest($1::text[], $2::timestamptz[])
ON CONFLICT (request_id) DO NOTHING
RETURNING request_id
"""

USAGE_COLUMNS = ["request_id", "user_id", "session_id", "ip_address", "tier", "provider", "model", "served_model",
                 "prompt_tokens", "completion_tokens", "cached_prompt_tokens", "cost", "priced", "endpoint", "success",
                 "error_message", "latency_ms", "tags", "usage_source", "api_key_id", "team_id", "created_at",
                 "cache_write_prompt_tokens", "cache_hit", "saved_usd"]

UPSERT_ROLLUPS = """
INSERT INTO llm_cost_rollups AS r (period, bucket, dimension, key, requests, successes, prompt_tokens,
                                   completion_tokens, cost, latency_ms_sum, estimated_requests, estimated_cost,
                                   cache_hits, saved_usd)
SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::text[], $5::bigint[], $6::bigint[],
                     $7::bigint[], $8::bigint[], $9::numeric[], $10::bigint[], $11::bigint[], $12::numeric[],
                     $13::bigint[], $14::numeric[])
ON CONFLICT (period, bucket, dimension, key) DO UPDATE SET
    requests = r.requests + excluded.requests,
    successes = r.successes + excluded.successes,
    prompt_tokens = r.prompt_tokens + excluded.prompt_tokens,
    completion_tokens = r.completion_tokens + excluded.completion_tokens,
    cost = r.cost + excluded.cost,
    latency_ms_sum = r.latency_ms_sum + excluded.latency_ms_sum,
    estimated_requests = r.estimated_requests + excluded.estimated_requests,
    estimated_cost = r.estimated_cost + excluded.estimated_cost,
    cache_hits = r.cache_hits + excluded.cache_hits,
    saved_usd = r.saved_usd + excluded.saved_usd
RETURNING r.period, r.bucket, r.dimension, r.key, r.cost
"""

UPSERT_SCOPE_SPEND = """
INSERT INTO scope_spend AS s (scope, scope_id, bucket, requests, cost)
SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::bigint[], $5::numeric[])
ON CONFLICT (scope, scope_id, bucket) DO UPDATE SET requests = s.requests + excluded.requests,
                                                   cost = s.cost + excluded.cost
"""

LOCK_SCOPES = """
SELECT pg_advisory_xact_lock(h) FROM (SELECT hashtextextended(name, 31) AS h FROM unnest($1::text[]) AS name
                                      ORDER BY 1) AS locks
"""

# Spend of each (scope, id) in [start, end), from its quarter hours.
SPAN_SPEND = """
SELECT a.i, coalesce(sum(s.cost), 0) AS cost
FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[]) WITH ORDINALITY AS a(scope, scope_id, f, t, i)
LEFT JOIN scope_spend s ON s.scope = a.scope AND s.scope_id = a.scope_id AND s.bucket >= a.f AND s.bucket < a.t
GROUP BY a.i ORDER BY a.i
"""

SCOPE_SPEND_RETENTION = timedelta(days=100)

CLAIM_ALERT = """
INSERT INTO cost_alerts (alert_key, alert_type, severity, scope, period, window_start, threshold, actual_cost,
                         message, event)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT (alert_key) DO NOTHING
"""


class PgLedgerTransaction:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def add_usage(self, records: Sequence[UsageRecord]) -> list[UsageRecord]:
        """Store the records whose request id was never stored; return those."""
        records = sorted(records, key=lambda r: r.request_id)  # one lock order for concurrent batches
        claimed = await self.conn.fetch(CLAIM_IDS, [r.request_id for r in records], [r.at for r in records])
        new_ids = {row["request_id"] for row in claimed}
        fresh = [r for r in records if r.request_id in new_ids]
        if fresh:
            await self.conn.copy_records_to_table("llm_usage", columns=USAGE_COLUMNS, records=[
                (r.request_id, e.user_id, e.session_id, e.client_ip, e.tier, e.provider, e.model, e.answered_by,
                 e.total_prompt_tokens, e.completion_tokens, e.cached_prompt_tokens, r.cost, r.priced, e.endpoint,
                 e.success, e.error, e.latency_ms, json.dumps(e.tags), e.usage_source, e.api_key_id, e.team_id,
                 e.occurred_at, e.cache_write_prompt_tokens, e.cache_hit, r.saved)
                for r in fresh for e in (r.event,)
            ])
        return fresh

    async def add_rollups(self, deltas: Sequence[tuple[RollupKey, RollupDelta]]) -> list[SpendTotal]:
        """Add the deltas; return the new totals that thresholds watch (overall, and users' days)."""
        columns = list(zip(*(
            (*key, d.requests, d.successes, d.prompt_tokens, d.completion_tokens, d.cost, d.latency_ms_sum,
             d.estimated_requests, d.estimated_cost, d.cache_hits, d.saved)
            for key, d in deltas
        ), strict=True))
        rows = await self.conn.fetch(UPSERT_ROLLUPS, *columns)
        return [SpendTotal(scope="all" if row["dimension"] == "all" else f"user:{row['key']}",
                           period=row["period"], bucket=row["bucket"], cost=row["cost"])
                for row in rows
                if row["dimension"] == "all" or (row["dimension"] == "user" and row["period"] == "day")]

    async def add_scope_spend(self, deltas: Sequence[tuple[SpendKey, int, Decimal]]) -> None:
        if deltas:
            await self.conn.execute(UPSERT_SCOPE_SPEND, *(list(column) for column in zip(
                *((scope, scope_id, bucket, requests, cost) for (scope, scope_id, bucket), requests, cost in deltas),
                strict=True)))

    async def budget_totals(self, watches: Sequence[BudgetWatch], lock: Sequence[str]) -> list[Decimal]:
        """Hold the watched scopes until the batch commits, then sum each watched period's spend, which
        now holds every batch committed before this one and this one."""
        await self.conn.execute(LOCK_SCOPES, list(lock))
        rows = await self.conn.fetch(SPAN_SPEND, [w.scope for w in watches], [w.scope_id for w in watches],
                                     [w.span.start for w in watches], [w.span.end for w in watches])
        return [row["cost"] for row in rows]

    async def claim_alerts(self, claims: Sequence[AlertClaim]) -> int:
        """Claim each alert's key; an alert already claimed (by any replica, ever) is dropped."""
        claimed = 0
        for claim in claims:
            alert = claim.alert
            result = await self.conn.execute(
                CLAIM_ALERT, alert.key, claim.kind, alert.severity, claim.scope, alert.period or "",
                datetime.fromisoformat(alert.window) if alert.window else alert.occurred_at,
                alert.threshold, alert.actual if alert.actual is not None else Decimal(0), alert.text,
                alert.model_dump_json(),
            )
            claimed += result.endswith(" 1")
        return claimed


class PgUsageLedger:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self._checked: dict[datetime, float] = {}

    async def ensure_partitions(self, records: Sequence[UsageRecord]) -> None:
        """Create the monthly partitions a batch needs, each in its own short transaction. A month seen
        in the last minute is not checked again (retention only drops months long past)."""
        now = time.monotonic()
        for month in sorted({bucket_start("month", r.at) for r in records}):
            if self._checked.get(month, 0.0) > now:
                continue
            await self.pool.execute("SELECT ensure_llm_usage_partition($1)", month)
            self._checked[month] = now + PARTITION_CHECK_S

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[PgLedgerTransaction]:
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                yield PgLedgerTransaction(conn)
        except asyncpg.CheckViolationError:
            self._checked.clear()  # a partition was dropped under us: check again on the retry
            raise

    async def publish_unpublished(self, publish: Callable[[Alert], Awaitable[None]], limit: int = 100) -> int:
        """Publish claimed alerts not yet published and mark them. Rows are locked while they are
        published (SKIP LOCKED), so two replicas never publish the same alert; if the process dies
        before the mark commits, the alert stays unpublished and is published again later."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch("SELECT id, event FROM cost_alerts WHERE published_at IS NULL ORDER BY id"
                                    " LIMIT $1 FOR UPDATE SKIP LOCKED", limit)
            for row in rows:
                await publish(Alert.model_validate_json(row["event"]))
                await conn.execute("UPDATE cost_alerts SET published_at = now() WHERE id = $1", row["id"])
        return len(rows)

    async def cleanup(self, retention_days: int) -> list[str]:
        await self.pool.execute("DELETE FROM scope_spend WHERE bucket < now() - $1::interval", SCOPE_SPEND_RETENTION)
        rows = await self.pool.fetch("SELECT cleanup_old_llm_usage($1) AS name", timedelta(days=retention_days))
        self._checked.clear()
        return [row["name"] for row in rows]
