"""rate_limit_violations in Postgres, written a batch at a time, idempotent on the event id."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from shared.events import LimitViolation

INSERT_BATCH = """
INSERT INTO rate_limit_violations
    (id, request_id, user_id, ip_address, tier, endpoint, policy, limited_by, limit_value, window_ms, created_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                     $8::text[], $9::int[], $10::bigint[], $11::timestamptz[])
ON CONFLICT (id) DO NOTHING
"""


class PgViolationLog:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def store(self, violations: Sequence[LimitViolation]) -> None:
        columns = list(zip(*(
            (v.id, v.request_id, v.user_id, v.client_ip, v.tier, v.endpoint, v.policy, v.limited_by,
             v.limit, v.window_s * 1000, v.occurred_at)
            for v in violations
        ), strict=True))
        await self.pool.execute(INSERT_BATCH, *columns)
