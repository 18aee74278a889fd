"""The limits administrators set (`scope_limits`), read from Postgres: their budgets' soft thresholds
raise the cost service's budget alerts."""

from __future__ import annotations

import json
import logging

import asyncpg
from pydantic import ValidationError

from shared.limits import Scope, ScopeLimits

log = logging.getLogger(__name__)


class PgScopeLimits:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def load(self) -> dict[tuple[Scope, str], ScopeLimits]:
        limits = {}
        for row in await self.pool.fetch("SELECT scope, scope_id, limits FROM scope_limits", timeout=10):
            try:
                limits[(row["scope"], row["scope_id"])] = ScopeLimits.model_validate(json.loads(row["limits"]))
            except (ValidationError, ValueError) as exc:  # written past the admin API, which validates
                log.error("ignoring invalid limits of %s %s: %s", row["scope"], row["scope_id"], exc)
        return limits
