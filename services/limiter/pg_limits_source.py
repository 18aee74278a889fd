"""The limits administrators set, read from Postgres (`scope_limits`, `team_members`, the user of every
key with limits), and the spend a new budget counter starts from (`scope_spend`, kept by the cost
service)."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal

import asyncpg
from pydantic import ValidationError

from services.limiter.limiter import LimitsUnavailable
from services.limiter.scopes import LimitsBook, SpendAsk
from shared.limits import ScopeLimits

LIMITS = """
SELECT l.scope, l.scope_id, l.limits, k.user_id AS key_user
FROM scope_limits l LEFT JOIN api_keys k ON l.scope = 'key' AND k.id::text = l.scope_id
"""

SPEND = """
SELECT a.i, s.bucket, s.cost
FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[]) WITH ORDINALITY AS a(scope, scope_id, s, e, i)
JOIN scope_spend s ON s.scope = a.scope AND s.scope_id = a.scope_id AND s.bucket >= a.s AND s.bucket < a.e
"""

log = logging.getLogger(__name__)

TIMEOUT_S = 10.0
ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


class PgLimitsSource:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def load(self) -> LimitsBook:
        try:
            async with self.pool.acquire(timeout=TIMEOUT_S) as conn, conn.transaction(readonly=True,
                                                                                        isolation="repeatable_read"):
                rows = await conn.fetch(LIMITS, timeout=TIMEOUT_S)
                members = await conn.fetch("SELECT user_id, team_id FROM team_members", timeout=TIMEOUT_S)
        except ERRORS as exc:
            raise LimitsUnavailable(type(exc).__name__) from exc
        limits, key_users = {}, {}
        for row in rows:
            try:
                limits[(row["scope"], row["scope_id"])] = ScopeLimits.model_validate(json.loads(row["limits"]))
            except (ValidationError, ValueError) as exc:  # written past the admin API, which validates
                log.error("ignoring invalid limits of %s %s: %s", row["scope"], row["scope_id"], exc)
                continue
            if row["key_user"] is not None:
                key_users[int(row["scope_id"])] = row["key_user"]
        return LimitsBook(limits, {row["user_id"]: row["team_id"] for row in members}, key_users)

    async def spend(self, asks: Sequence[SpendAsk]) -> list[dict[datetime, Decimal]]:
        found: list[dict[datetime, Decimal]] = [{} for _ in asks]
        try:
            rows = await self.pool.fetch(SPEND, [a.scope for a in asks], [a.scope_id for a in asks],
                                         [a.start for a in asks], [a.end for a in asks], timeout=TIMEOUT_S)
        except ERRORS as exc:
            raise LimitsUnavailable(type(exc).__name__) from exc
        for row in rows:
            found[row["i"] - 1][row["bucket"]] = row["cost"]
        return found
