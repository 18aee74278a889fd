"""Read side of the ledger in Postgres, the CostQueries port of shared/cost_query.py: current spend from
the rollups, analytics for a time range."""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal

import asyncpg

from services.cost.rollups import bucket_start
from shared.cost_query import Analytics, Breakdown, BudgetSpend, CostQuery, CurrentCost, ScopeSpend
from shared.events import utc_now
from shared.limits import Scope, ScopeLimits

ROLLUP_COST = """
SELECT period, coalesce(sum(cost), 0) AS cost FROM llm_cost_rollups
WHERE dimension = $1 AND key = $2
  AND (period, bucket) IN (('hour', $3::timestamptz), ('day', $4::timestamptz), ('month', $5::timestamptz))
GROUP BY period
"""

# Tokens are the providers': a cache hit's are not counted (as in the rollups).
TOTALS = """
SELECT count(*) AS requests, count(*) FILTER (WHERE success) AS successes,
       coalesce(sum(prompt_tokens) FILTER (WHERE NOT cache_hit), 0) AS prompt_tokens,
       coalesce(sum(completion_tokens) FILTER (WHERE NOT cache_hit), 0) AS completion_tokens,
       coalesce(sum(cost), 0) AS cost,
       count(*) FILTER (WHERE usage_source = 'estimated') AS estimated_requests,
       coalesce(sum(cost) FILTER (WHERE usage_source = 'estimated'), 0) AS estimated_cost,
       count(*) FILTER (WHERE cache_hit) AS cache_hits, coalesce(sum(saved_usd), 0) AS saved_usd,
       percentile_cont(0.50) WITHIN GROUP (ORDER BY latency_ms) AS p50,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms) AS p95,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY latency_ms) AS p99
FROM llm_usage WHERE created_at >= $1 AND created_at < $2 AND ($3::text IS NULL OR user_id = $3)
"""

BREAKDOWN = """
SELECT {key} AS key, count(*) AS requests,
       coalesce(sum(prompt_tokens) FILTER (WHERE NOT cache_hit), 0) AS prompt_tokens,
       coalesce(sum(completion_tokens) FILTER (WHERE NOT cache_hit), 0) AS completion_tokens, sum(cost) AS cost,
       count(*) FILTER (WHERE usage_source = 'estimated') AS estimated_requests,
       coalesce(sum(cost) FILTER (WHERE usage_source = 'estimated'), 0) AS estimated_cost,
       count(*) FILTER (WHERE cache_hit) AS cache_hits, coalesce(sum(saved_usd), 0) AS saved_usd
FROM llm_usage {join}
WHERE created_at >= $1 AND created_at < $2 AND ($3::text IS NULL OR user_id = $3) {extra}
GROUP BY 1 ORDER BY cost DESC, key LIMIT $4
"""

# Each budget's spend in its period, and its first quarter hour with spend (when a rolling window frees).
BUDGET_SPEND = """
SELECT a.i, coalesce(sum(s.cost), 0) AS cost, min(s.bucket) FILTER (WHERE s.cost > 0) AS first_spent
FROM unnest($3::timestamptz[], $4::timestamptz[]) WITH ORDINALITY AS a(f, t, i)
LEFT JOIN scope_spend s ON s.scope = $1 AND s.scope_id = $2 AND s.bucket >= a.f AND s.bucket < a.t
GROUP BY a.i ORDER BY a.i
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

    async def answer(self, query: CostQuery) -> CurrentCost | Analytics | ScopeSpend:
        if query.kind == "current":
            return await self.current(query.user_id, api_key_id=query.api_key_id)
        if query.kind == "budgets":
            assert query.scope is not None and query.scope_id is not None
            return await self.budgets(query.scope, query.scope_id)
        return await self.analytics(query)

    async def budgets(self, scope: Scope, scope_id: str, now: datetime | None = None) -> ScopeSpend:
        """A scope's spend against each budget it has now (read from `scope_limits` as it is, not as this
        replica last loaded it), and this UTC day's and month's."""
        now = now or utc_now()
        async with self.pool.acquire() as conn:
            raw = await conn.fetchval("SELECT limits FROM scope_limits WHERE scope = $1 AND scope_id = $2",
                                      scope, scope_id)
            budgets = ScopeLimits.model_validate(json.loads(raw)).budgets if raw else ()
            spans = [budget.spend_span(now) for budget in budgets]
            rows = await conn.fetch(BUDGET_SPEND, scope, scope_id, [s.start for s in spans], [s.end for s in spans])
            utc = {row["period"]: row["cost"] for row in await conn.fetch(
                ROLLUP_COST, scope, scope_id, bucket_start("hour", now), bucket_start("day", now),
                bucket_start("month", now))}
        answers = []
        for budget, span, row in zip(budgets, spans, rows, strict=True):
            spent = row["cost"]
            answers.append(BudgetSpend(budget=budget, period_start=span.start, resets_at=budget.resets_at(
                now, row["first_spent"]), spent_usd=spent, remaining_usd=max(Decimal(0), budget.usd - spent)))
        return ScopeSpend(scope=scope, scope_id=scope_id, as_of=now, budgets=answers,
                          today_usd=utc.get("day", Decimal(0)), this_month_usd=utc.get("month", Decimal(0)))

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
        hit_rate = (Decimal(100) * totals["cache_hits"] / requests).quantize(Decimal("0.01")) if requests else None
        return Analytics(
            user_id=query.user_id, start=query.start, end=query.end, requests=requests,
            successful_requests=totals["successes"],
            success_rate=success_rate,
            prompt_tokens=totals["prompt_tokens"], completion_tokens=totals["completion_tokens"], cost=totals["cost"],
            estimated_requests=totals["estimated_requests"], estimated_cost=totals["estimated_cost"],
            cache_hits=totals["cache_hits"], cache_hit_rate=hit_rate, saved_usd=totals["saved_usd"],
            latency_ms={"p50": totals["p50"], "p95": totals["p95"], "p99": totals["p99"]},
            **breakdowns,
        )
