"""Read side of the ledger in Postgres, the CostQueries port of shared/cost_query.py: current spend from
the rollups, analytics for a time range."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import asyncpg

from services.cost.rollups import bucket_start
from shared.cost_query import Analytics, Breakdown, CostQuery, CurrentCost
from shared.events import utc_now

ROLLUP_COST = """
SELECT period, coalesce(sum(cost), 0) AS cost FROM llm_cost_rollups
WHERE dimension = $1 AND key = $2
  AND (period, bucket) IN (('hour', $3::timestamptz), ('day', $4::timestamptz), ('month', $5::timestamptz))
GROUP BY period
"""

TOTALS = """
SELECT count(*) AS requests, count(*) FILTER (WHERE success) AS successes,
       coalesce(sum(prompt_tokens), 0) AS prompt_tokens, coalesce(sum(completion_tokens), 0) AS completion_tokens,
       coalesce(sum(cost), 0) AS cost,
       count(*) FILTER (WHERE usage_source = 'estimated') AS estimated_requests,
       coalesce(sum(cost) FILTER (WHERE usage_source = 'estimated'), 0) AS estimated_cost,
       percentile_cont(0.50) WITHIN GROUP (ORDER BY latency_ms) AS p50,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms) AS p95,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY latency_ms) AS p99
FROM llm_usage WHERE created_at >= $1 AND created_at < $2 AND ($3::text IS NULL OR user_id = $3)
"""

BREAKDOWN = """
SELECT {key} AS key, count(*) AS requests, sum(prompt_tokens) AS prompt_tokens,
       sum(completion_tokens) AS completion_tokens, sum(cost) AS cost,
       count(*) FILTER (WHERE usage_source = 'estimated') AS estimated_requests,
       coalesce(sum(cost) FILTER (WHERE usage_source = 'estimated'), 0) AS estimated_cost
FROM llm_usage {join}
WHERE created_at >= $1 AND created_at < $2 AND ($3::text IS NULL OR user_id = $3) {extra}
GROUP BY 1 ORDER BY cost DESC, key LIMIT $4
"""

BREAKDOWNS = {
    "by_model": ("model", "", ""),
    "by_served_model": ("served_model", "", ""),
    "by_endpoint": ("endpoint", "", ""),
    "by_user": ("user_id", "", "AND user_id IS NOT NULL"),
    "by_tag": ("t.key || '=' || t.value", "CROSS JOIN LATERAL jsonb_each_text(tags) AS t", ""),
}


class PgCostQueries:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def answer(self, query: CostQuery) -> CurrentCost | Analytics:
        if query.kind == "current":
            return await self.current(query.user_id, api_key_id=query.api_key_id)
        return await self.analytics(query)

    async def current(self, user_id: str | None, now: datetime | None = None, api_key_id: int | None = None
                      ) -> CurrentCost:
        """Spend this hour, today and this month: one key's, one user's, or everyone's."""
        now = now or utc_now()
        if api_key_id:
            dimension, key = "key", str(api_key_id)
        elif user_id:
            dimension, key = "user", user_id
        else:
            dimension, key = "all", ""
        rows = await self.pool.fetch(ROLLUP_COST, dimension, key, bucket_start("hour", now),
                                     bucket_start("day", now), bucket_start("month", now))
        by_period = {row["period"]: row["cost"] for row in rows}
        return CurrentCost(user_id=user_id, api_key_id=api_key_id, hourly=by_period.get("hour", Decimal(0)),
                           daily=by_period.get("day", Decimal(0)), monthly=by_period.get("month", Decimal(0)),
                           as_of=now)

    async def analytics(self, query: CostQuery) -> Analytics:
        args = (query.start, query.end, query.user_id)
        async with self.pool.acquire() as conn:
            totals = await conn.fetchrow(TOTALS, *args)
            breakdowns = {}
            for name, (key, join, extra) in BREAKDOWNS.items():
                rows = await conn.fetch(BREAKDOWN.format(key=key, join=join, extra=extra), *args, query.top_n)
                breakdowns[name] = [Breakdown(**dict(row)) for row in rows]
        assert query.start is not None and query.end is not None  # CostQuery requires both for analytics
        requests = totals["requests"]
        success_rate = (Decimal(100) * totals["successes"] / requests).quantize(Decimal("0.01")) if requests else None
        return Analytics(
            user_id=query.user_id, start=query.start, end=query.end, requests=requests,
            successful_requests=totals["successes"],
            success_rate=success_rate,
            prompt_tokens=totals["prompt_tokens"], completion_tokens=totals["completion_tokens"], cost=totals["cost"],
            estimated_requests=totals["estimated_requests"], estimated_cost=totals["estimated_cost"],
            latency_ms={"p50": totals["p50"], "p95": totals["p95"], "p99": totals["p99"]},
            **breakdowns,
        )
