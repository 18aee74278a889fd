"""Claims and delivery records in Postgres (alert_claims, alert_deliveries)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Literal

import asyncpg

from shared.events import Alert

CLAIM = """
INSERT INTO alert_claims (alert_key, channel, status, claimed_at) VALUES ($1, $2, 'sending', now())
ON CONFLICT (alert_key, channel) DO UPDATE SET status = 'sending', claimed_at = now()
WHERE (alert_claims.status = 'sending' AND alert_claims.claimed_at < now() - $3::interval)
   OR (alert_claims.status <> 'sending' AND alert_claims.claimed_at < now() - $4::interval)
RETURNING alert_key
"""


class PgDeliveryLog:
    def __init__(self, pool: asyncpg.Pool, lease: timedelta, repeat_interval: timedelta) -> None:
        self.pool = pool
        self.lease = lease
        self.repeat_interval = repeat_interval

    async def claim(self, alert_key: str, channel: str) -> Literal["claimed", "busy", "done"]:
        """Take the right to notify `channel` of this alert: "claimed"; "busy" while another delivery
        holds a live lease (a dead replica's lease runs out); "done" when it was delivered (or given up)
        within the repeat interval."""
        async with self.pool.acquire() as conn:
            if await conn.fetchval(CLAIM, alert_key, channel, self.lease, self.repeat_interval) is not None:
                return "claimed"
            status = await conn.fetchval("SELECT status FROM alert_claims WHERE alert_key = $1 AND channel = $2",
                                         alert_key, channel)
        return "busy" if status == "sending" else "done"

    async def finish(self, alerts: Sequence[Alert], channel: str, status: str) -> None:
        await self.pool.execute(
            "UPDATE alert_claims SET status = $3, claimed_at = now()"
            " WHERE alert_key = ANY($1::text[]) AND channel = $2",
            [a.key for a in alerts], channel, status)

    async def record(self, alerts: Sequence[Alert], channel: str, attempt: int, status: str,
                     error: str | None) -> None:
        await self.pool.executemany(
            "INSERT INTO alert_deliveries (alert_key, alert_id, channel, attempt, status, error, digest_size)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7)",
            [(a.key, a.id, channel, attempt, status, error, len(alerts)) for a in alerts])

    async def channels_that_got(self, alert_key: str) -> list[str]:
        rows = await self.pool.fetch(
            "SELECT DISTINCT channel FROM alert_deliveries WHERE alert_key = $1 AND status = 'sent'", alert_key)
        return sorted(row["channel"] for row in rows)
