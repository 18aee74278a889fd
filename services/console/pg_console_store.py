"""What the console shows, read from Postgres as the costwarden_console role (SELECT only). Spend and
breakdowns come from the cost service's rollups wherever one serves; only what no rollup keeps (a single
user's breakdown, requests per minute and the 95th percentile of latency) is read from the ledger, over
an indexed time range."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal

import asyncpg

from services.console.console import (
    AlertRow,
    BackupRow,
    BreakdownRow,
    Delivery,
    DenialRow,
    DeniedCaller,
    KeyUsage,
    LimitsRow,
    TeamRow,
    Traffic,
)
from services.console.periods import TimeRange, floor_hour, rollup_spans
from shared.api_keys import KEY_COLUMNS, KeyRecord
from shared.budget_periods import Span
from shared.limits import Scope, ScopeLimits

SPEND = """
SELECT period, coalesce(sum(cost), 0) AS cost, coalesce(sum(saved_usd), 0) AS saved FROM llm_cost_rollups
WHERE dimension = $1 AND key = $2
  AND (period, bucket) IN (('hour', $3::timestamptz), ('day', $4::timestamptz), ('month', $5::timestamptz))
GROUP BY period
"""

HOURLY_COST = """
SELECT bucket, cost FROM llm_cost_rollups
WHERE period = 'hour' AND dimension = $1 AND key = $2 AND bucket >= $3 AND bucket < $4
"""

# The range's totals (the row whose minute is NULL) and its requests per minute, from one scan.
TRAFFIC = """
WITH calls AS MATERIALIZED (
    SELECT created_at, success, latency_ms FROM llm_usage
    WHERE created_at >= $1 AND created_at < $2 AND ($3::text IS NULL OR user_id = $3)
)
SELECT NULL::timestamptz AS minute, count(*) AS requests, count(*) FILTER (WHERE success) AS successes,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms) AS p95
FROM calls
UNION ALL
SELECT date_trunc('minute', created_at), count(*), NULL, NULL FROM calls GROUP BY 1
"""

SUMS = ("sum(requests) AS requests, sum(prompt_tokens) AS prompt_tokens, sum(completion_tokens) AS completion_tokens,"
        " sum(cost) AS cost, sum(estimated_cost) AS estimated_cost, sum(cache_hits) AS cache_hits,"
        " sum(saved_usd) AS saved")

ROLLUP_BREAKDOWN = f"""
SELECT key, {SUMS} FROM llm_cost_rollups
WHERE dimension = $1
  AND ((period = $2 AND bucket >= $3 AND bucket < $4) OR (period = $5 AND bucket >= $6 AND bucket < $7)
       OR (period = $8 AND bucket >= $9 AND bucket < $10))
GROUP BY key ORDER BY {{order}} LIMIT $11
"""

LEDGER_KEYS = {"model": "model", "served_model": "served_model", "endpoint": "endpoint", "user": "user_id"}

# One user's breakdown from the ledger (no rollup keeps a user by model, endpoint or tag); its tokens are
# the providers', as in the rollups (a cache hit's are not counted). Tags are grouped by their whole set
# first: a user has few distinct sets, so each is expanded once, not per row.
LEDGER_BREAKDOWN = """
WITH grouped AS (
    SELECT {key} AS key, count(*) AS requests,
           coalesce(sum(prompt_tokens) FILTER (WHERE NOT cache_hit), 0) AS prompt_tokens,
           coalesce(sum(completion_tokens) FILTER (WHERE NOT cache_hit), 0) AS completion_tokens, sum(cost) AS cost,
           coalesce(sum(cost) FILTER (WHERE usage_source = 'estimated'), 0) AS estimated_cost,
           count(*) FILTER (WHERE cache_hit) AS cache_hits, sum(saved_usd) AS saved
    FROM llm_usage WHERE user_id = $1 AND created_at >= $2 AND created_at < $3 GROUP BY 1
)
SELECT key, requests, prompt_tokens, completion_tokens, cost, estimated_cost, cache_hits, saved FROM grouped
ORDER BY {order} LIMIT $4
"""

LEDGER_TAG_BREAKDOWN = """
WITH grouped AS (
    SELECT tags, count(*) AS requests,
           coalesce(sum(prompt_tokens) FILTER (WHERE NOT cache_hit), 0) AS prompt_tokens,
           coalesce(sum(completion_tokens) FILTER (WHERE NOT cache_hit), 0) AS completion_tokens, sum(cost) AS cost,
           coalesce(sum(cost) FILTER (WHERE usage_source = 'estimated'), 0) AS estimated_cost,
           count(*) FILTER (WHERE cache_hit) AS cache_hits, sum(saved_usd) AS saved
    FROM llm_usage WHERE user_id = $1 AND created_at >= $2 AND created_at < $3 GROUP BY tags
)
SELECT t.key || '=' || t.value AS key, sum(requests) AS requests, sum(prompt_tokens) AS prompt_tokens,
       sum(completion_tokens) AS completion_tokens, sum(cost) AS cost, sum(estimated_cost) AS estimated_cost,
       sum(cache_hits) AS cache_hits, sum(saved) AS saved
FROM grouped CROSS JOIN LATERAL jsonb_each_text(tags) AS t
GROUP BY 1 ORDER BY {order} LIMIT $4
"""

ORDER_BY = {"cost": "cost DESC, key", "requests": "requests DESC, key",
            "tokens": "prompt_tokens + completion_tokens DESC, key", "key": "key"}
# Queries that aggregate in their last step order by their own sums (an output column's name may not be
# used inside an expression).
ROLLUP_ORDER_BY = {**ORDER_BY, "tokens": "sum(prompt_tokens) + sum(completion_tokens) DESC, key"}

USAGE_BY_KEY = """
SELECT key, period, cost, requests FROM llm_cost_rollups
WHERE dimension = 'key' AND key = ANY($1::text[])
  AND (period, bucket) IN (('day', $2::timestamptz), ('month', $3::timestamptz))
"""

DENIALS = """
SELECT date_trunc('hour', created_at) AS hour, tier, endpoint, limited_by AS reason, count(*) AS denials
FROM rate_limit_violations
WHERE created_at >= $1 AND created_at < $2 AND ($3::text IS NULL OR user_id = $3)
GROUP BY 1, 2, 3, 4 ORDER BY 1 DESC, 5 DESC, 2, 3, 4
"""

MOST_DENIED = """
SELECT coalesce('user ' || user_id, 'ip ' || ip_address, 'unknown') AS caller, max(tier) AS tier,
       count(*) AS denials, max(created_at) AS last_at
FROM rate_limit_violations
WHERE created_at >= $1 AND created_at < $2 AND ($3::text IS NULL OR user_id = $3)
GROUP BY 1 ORDER BY 3 DESC, 1 LIMIT $4
"""

ALERTS = """
SELECT key, severity, message, raised_at FROM (
    SELECT alert_key AS key, severity, message, created_at AS raised_at FROM cost_alerts
    WHERE created_at >= $1 AND ($2::text IS NULL OR scope = 'user:' || $2)
    UNION ALL
    SELECT d.alert_key, NULL, NULL, min(d.created_at) FROM alert_deliveries d
    WHERE $2::text IS NULL AND d.created_at >= $1
      AND NOT EXISTS (SELECT FROM cost_alerts c WHERE c.alert_key = d.alert_key)
    GROUP BY d.alert_key
) raised ORDER BY raised_at DESC, key LIMIT $3
"""

DELIVERIES = """
SELECT DISTINCT ON (alert_key, channel) alert_key, channel, status, error,
       max(attempt) OVER (PARTITION BY alert_key, channel) AS attempts
FROM alert_deliveries WHERE alert_key = ANY($1::text[])
ORDER BY alert_key, channel, id DESC
"""

BACKUPS = """
SELECT id, trigger, status, object_key, size_bytes, sha256, error, started_at, finished_at FROM backup_logs
ORDER BY started_at DESC, id DESC LIMIT $1
"""


SCOPE_LIMITS = """
SELECT scope, scope_id, limits, updated_at, updated_by FROM scope_limits
WHERE $1::text[] IS NULL OR (scope || ':' || scope_id) = ANY($1::text[])
ORDER BY array_position(ARRAY['team', 'user', 'key'], scope), scope_id
"""

BUDGET_SPEND = """
SELECT a.i, coalesce(sum(s.cost), 0) AS cost, min(s.bucket) FILTER (WHERE s.cost > 0) AS first_spent
FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[]) WITH ORDINALITY AS a(scope, scope_id, f, t, i)
LEFT JOIN scope_spend s ON s.scope = a.scope AND s.scope_id = a.scope_id AND s.bucket >= a.f AND s.bucket < a.t
GROUP BY a.i ORDER BY a.i
"""

TEAMS = """
SELECT t.team_id, t.name, t.created_at, coalesce(array_agg(m.user_id ORDER BY m.user_id)
                                                 FILTER (WHERE m.user_id IS NOT NULL), '{}') AS members
FROM teams t LEFT JOIN team_members m ON m.team_id = t.team_id
WHERE $1::text IS NULL OR t.team_id = $1
GROUP BY t.team_id ORDER BY t.team_id
"""

TEAM_SPEND = """
SELECT key, period, cost FROM llm_cost_rollups
WHERE dimension = 'team' AND key = ANY($1::text[])
  AND (period, bucket) IN (('day', $2::timestamptz), ('month', $3::timestamptz))
"""


def scope_of(user: str | None) -> tuple[str, str]:
    return ("user", user) if user else ("all", "")


def breakdown_row(row: asyncpg.Record) -> BreakdownRow:
    return BreakdownRow(row["key"] or "", int(row["requests"]), int(row["prompt_tokens"]),
                        int(row["completion_tokens"]), row["cost"], row["estimated_cost"], int(row["cache_hits"]),
                        row["saved"])


class PgConsoleStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def signed_in_key(self, key_hash: str) -> KeyRecord | None:
        row = await self.pool.fetchrow(f"SELECT {KEY_COLUMNS} FROM api_keys WHERE key_hash = $1", key_hash)
        return KeyRecord.from_row(row) if row else None

    async def key(self, key_id: int) -> KeyRecord | None:
        row = await self.pool.fetchrow(f"SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1", key_id)
        return KeyRecord.from_row(row) if row else None

    async def spend(self, user: str | None, now: datetime) -> dict[str, tuple[Decimal, Decimal]]:
        hour = floor_hour(now)
        day = hour.replace(hour=0)
        rows = await self.pool.fetch(SPEND, *scope_of(user), hour, day, day.replace(day=1))
        return {row["period"]: (row["cost"], row["saved"]) for row in rows}

    async def hourly_cost(self, user: str | None, start: datetime, end: datetime) -> dict[datetime, Decimal]:
        rows = await self.pool.fetch(HOURLY_COST, *scope_of(user), start, end)
        return {row["bucket"]: row["cost"] for row in rows}

    async def traffic(self, user: str | None, start: datetime, end: datetime) -> Traffic:
        rows = await self.pool.fetch(TRAFFIC, start, end, user)
        totals = next(row for row in rows if row["minute"] is None)
        return Traffic({row["minute"]: row["requests"] for row in rows if row["minute"] is not None},
                       totals["requests"], totals["successes"], totals["p95"])

    async def breakdown(self, user: str | None, window: TimeRange, dimension: str, order: str,
                        limit: int) -> list[BreakdownRow]:
        if user is not None:
            if dimension == "tag":
                sql = LEDGER_TAG_BREAKDOWN.format(order=ROLLUP_ORDER_BY[order])
            else:
                sql = LEDGER_BREAKDOWN.format(key=LEDGER_KEYS[dimension], order=ORDER_BY[order])
            return [breakdown_row(row) for row in await self.pool.fetch(sql, user, window.start, window.end, limit)]
        spans = rollup_spans(window.start, window.end)
        spans += [("hour", window.end, window.end)] * (3 - len(spans))  # empty: matches no bucket
        args = [value for span in spans for value in span]
        rows = await self.pool.fetch(ROLLUP_BREAKDOWN.format(order=ROLLUP_ORDER_BY[order]), dimension, *args, limit)
        return [breakdown_row(row) for row in rows]

    async def keys(self, user: str | None) -> list[KeyRecord]:
        rows = await self.pool.fetch(f"SELECT {KEY_COLUMNS} FROM api_keys WHERE ($1::text IS NULL OR user_id = $1)"
                                     " ORDER BY created_at DESC, id DESC LIMIT 500", user)
        return [KeyRecord.from_row(row) for row in rows]

    async def usage_by_key(self, key_ids: Sequence[int], now: datetime) -> dict[int, KeyUsage]:
        day = floor_hour(now).replace(hour=0)
        rows = await self.pool.fetch(USAGE_BY_KEY, [str(key_id) for key_id in key_ids], day, day.replace(day=1))
        found: dict[int, dict[str, asyncpg.Record]] = {}
        for row in rows:
            found.setdefault(int(row["key"]), {})[row["period"]] = row
        return {key_id: KeyUsage(
            today=periods["day"]["cost"] if "day" in periods else Decimal(0),
            this_month=periods["month"]["cost"] if "month" in periods else Decimal(0),
            requests_today=int(periods["day"]["requests"]) if "day" in periods else 0,
        ) for key_id, periods in found.items()}

    async def denials(self, user: str | None, start: datetime, end: datetime) -> list[DenialRow]:
        rows = await self.pool.fetch(DENIALS, start, end, user)
        return [DenialRow(row["hour"], row["tier"], row["endpoint"], row["reason"], row["denials"]) for row in rows]

    async def most_denied(self, user: str | None, start: datetime, end: datetime, limit: int) -> list[DeniedCaller]:
        rows = await self.pool.fetch(MOST_DENIED, start, end, user, limit)
        return [DeniedCaller(row["caller"], row["tier"], row["denials"], row["last_at"]) for row in rows]

    async def alerts(self, user: str | None, since: datetime, limit: int) -> list[AlertRow]:
        async with self.pool.acquire() as conn:
            raised = await conn.fetch(ALERTS, since, user, limit)
            deliveries = await conn.fetch(DELIVERIES, [row["key"] for row in raised])
        by_key: dict[str, dict[str, Delivery]] = {}
        for row in deliveries:
            by_key.setdefault(row["alert_key"], {})[row["channel"]] = Delivery(row["status"], row["attempts"],
                                                                                row["error"])
        return [AlertRow(row["key"], row["severity"] or "", row["message"] or "", row["raised_at"],
                         by_key.get(row["key"], {})) for row in raised]

    async def backups(self, limit: int) -> list[BackupRow]:
        return [BackupRow(**dict(row)) for row in await self.pool.fetch(BACKUPS, limit)]


    async def scope_limits(self, scopes: Sequence[tuple[Scope, str]] | None) -> list[LimitsRow]:
        names = None if scopes is None else [f"{scope}:{scope_id}" for scope, scope_id in scopes]
        rows = await self.pool.fetch(SCOPE_LIMITS, names)
        return [LimitsRow(row["scope"], row["scope_id"], ScopeLimits.model_validate(json.loads(row["limits"])),
                          row["updated_at"], row["updated_by"]) for row in rows]

    async def budget_spend(self, asks: Sequence[tuple[Scope, str, Span]]) -> list[tuple[Decimal, datetime | None]]:
        rows = await self.pool.fetch(BUDGET_SPEND, [a[0] for a in asks], [a[1] for a in asks],
                                     [a[2].start for a in asks], [a[2].end for a in asks])
        return [(row["cost"], row["first_spent"]) for row in rows]

    async def teams(self, team_id: str | None) -> list[TeamRow]:
        return [TeamRow(row["team_id"], row["name"], row["created_at"], tuple(row["members"]))
                for row in await self.pool.fetch(TEAMS, team_id)]

    async def team_of(self, user: str) -> str | None:
        team: str | None = await self.pool.fetchval("SELECT team_id FROM team_members WHERE user_id = $1", user)
        return team

    async def team_keys(self, team_ids: Sequence[str]) -> dict[str, list[KeyRecord]]:
        rows = await self.pool.fetch(f"SELECT team_id, {KEY_COLUMNS} FROM api_keys WHERE team_id = ANY($1::text[])"
                                     " ORDER BY created_at, id", list(team_ids))
        found: dict[str, list[KeyRecord]] = {}
        for row in rows:
            found.setdefault(row["team_id"], []).append(KeyRecord.from_row(row))
        return found

    async def team_spend(self, team_ids: Sequence[str], now: datetime) -> dict[str, tuple[Decimal, Decimal]]:
        day = floor_hour(now).replace(hour=0)
        rows = await self.pool.fetch(TEAM_SPEND, list(team_ids), day, day.replace(day=1))
        spend: dict[str, dict[str, Decimal]] = {}
        for row in rows:
            spend.setdefault(row["key"], {})[row["period"]] = row["cost"]
        return {team: (periods.get("day", Decimal(0)), periods.get("month", Decimal(0)))
                for team, periods in spend.items()}
