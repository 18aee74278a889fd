"""The ledger in Postgres: llm_usage rows, rollups and alert claims, one transaction per batch."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from decimal import Decimal

import asyncpg

from services.cost.ledger import RollupDelta, RollupKey, UsageRecord, bucket_start
from services.cost.thresholds import AlertClaim, SpendTotal
from shared.events import Alert

CLAIM_IDS = """
INSERT INTO llm_usage_ids (request_id, created_at)
SELECT * FROM unnest($1::text[], $2::timestamptz[])
ON CONFLICT (request_id) DO NOTHING
RETURNING request_id
"""

INSERT_USAGE = """
INSERT INTO llm_usage (request_id, user_id, session_id, ip_address, tier, provider, model, prompt_tokens,
                       completion_tokens, cached_prompt_tokens, cost, priced, endpoint, success, error_message,
                       latency_ms, tags, created_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                     $8::int[], $9::int[], $10::int[], $11::numeric[], $12::bool[], $13::text[], $14::bool[],
                     $15::text[], $16::int[], $17::jsonb[], $18::timestamptz[])
"""

UPSERT_ROLLUPS = """
INSERT INTO llm_cost_rollups AS r (period, bucket, dimension, key, requests, successes, prompt_tokens,
                                   completion_tokens, cost, latency_ms_sum)
SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::text[], $5::bigint[], $6::bigint[],
                     $7::bigint[], $8::bigint[], $9::numeric[], $10::bigint[])
ON CONFLICT (period, bucket, dimension, key) DO UPDATE SET
    requests = r.requests + excluded.requests,
    successes = r.successes + excluded.successes,
    prompt_tokens = r.prompt_tokens + excluded.prompt_tokens,
    completion_tokens = r.completion_tokens + excluded.completion_tokens,
    cost = r.cost + excluded.cost,
    latency_ms_sum = r.latency_ms_sum + excluded.latency_ms_sum
"""

READ_TOTALS = """
SELECT r.period, r.bucket, r.dimension, r.key, r.cost
FROM llm_cost_rollups r
JOIN unnest($1::text[], $2::timestamptz[], $3::text[], $4::text[]) AS w(period, bucket, dimension, key)
  ON (r.period, r.bucket, r.dimension, r.key) = (w.period, w.bucket, w.dimension, w.key)
"""

CLAIM_ALERT = """
INSERT INTO cost_alerts (alert_key, alert_type, severity, scope, period, window_start, threshold, actual_cost,
                         message, event)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT (alert_key) DO NOTHING
"""


class LedgerTransaction:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def add_usage(self, records: Sequence[UsageRecord]) -> list[UsageRecord]:
        """Store the records whose request id was never stored; return those."""
        claimed = await self.conn.fetch(CLAIM_IDS, [r.request_id for r in records], [r.at for r in records])
        new_ids = {row["request_id"] for row in claimed}
        fresh = [r for r in records if r.request_id in new_ids]
        if not fresh:
            return []
        columns = list(zip(*(
            (r.request_id, e.user_id, e.session_id, e.client_ip, e.tier, e.provider, e.model, e.prompt_tokens,
             e.completion_tokens, e.cached_prompt_tokens, r.cost, r.priced, e.endpoint, e.success, e.error,
             e.latency_ms, json.dumps(e.tags), e.occurred_at)
            for r in fresh for e in (r.event,)
        ), strict=True))
        await self.conn.execute(INSERT_USAGE, *columns)
        return fresh

    async def add_rollups(self, deltas: Sequence[tuple[RollupKey, RollupDelta]]) -> None:
        columns = list(zip(*(
            (*key, d.requests, d.successes, d.prompt_tokens, d.completion_tokens, d.cost, d.latency_ms_sum)
            for key, d in deltas
        ), strict=True))
        await self.conn.execute(UPSERT_ROLLUPS, *columns)

    async def totals(self, windows: Sequence[RollupKey]) -> list[SpendTotal]:
        rows = await self.conn.fetch(READ_TOTALS, *zip(*windows, strict=True))
        return [SpendTotal(scope="all" if row["dimension"] == "all" else f"user:{row['key']}",
                           period=row["period"], bucket=row["bucket"], cost=row["cost"]) for row in rows]

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

    async def ensure_partitions(self, records: Sequence[UsageRecord]) -> None:
        """Create the monthly partitions a batch needs, each in its own short transaction (not cached:
        another replica's retention may have dropped one since)."""
        for month in sorted({bucket_start("month", r.at) for r in records}):
            await self.pool.execute("SELECT ensure_llm_usage_partition($1)", month)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[LedgerTransaction]:
        async with self.pool.acquire() as conn, conn.transaction():
            yield LedgerTransaction(conn)

    async def unpublished_alerts(self, limit: int = 100) -> list[tuple[int, Alert]]:
        rows = await self.pool.fetch(
            "SELECT id, event FROM cost_alerts WHERE published_at IS NULL ORDER BY id LIMIT $1", limit)
        return [(row["id"], Alert.model_validate_json(row["event"])) for row in rows]

    async def mark_published(self, alert_id: int) -> None:
        await self.pool.execute("UPDATE cost_alerts SET published_at = now() WHERE id = $1", alert_id)

    async def month_to_date(self, now: datetime) -> Decimal:
        value = await self.pool.fetchval(
            "SELECT cost FROM llm_cost_rollups WHERE period = 'month' AND dimension = 'all' AND key = ''"
            " AND bucket = $1", bucket_start("month", now))
        return value or Decimal(0)

    async def cleanup(self, retention_days: int) -> list[str]:
        rows = await self.pool.fetch("SELECT cleanup_old_llm_usage($1) AS name", timedelta(days=retention_days))
        return [row["name"] for row in rows]
