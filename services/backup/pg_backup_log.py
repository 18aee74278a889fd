"""Backup runs in Postgres: `backup_logs` rows, and one advisory lock so that one backup runs at a time
across replicas."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime

import asyncpg

from services.backup.worker import BackupStatus, Trigger

BACKUP_LOCK = 0x6377_6261_636B  # "cwback"


class PgBackupLog:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[bool]:
        async with self.pool.acquire() as conn:
            mine = bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", BACKUP_LOCK))
            try:
                yield mine
            finally:
                if mine:
                    await conn.execute("SELECT pg_advisory_unlock($1)", BACKUP_LOCK)

    async def start(self, trigger: Trigger, slot: str | None, request_id: str | None) -> int | None:
        log_id: int | None = await self.pool.fetchval(
            "INSERT INTO backup_logs (trigger, slot, request_id, status) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (slot) DO NOTHING RETURNING id", trigger, slot, request_id, BackupStatus.RUNNING)
        return log_id

    async def handled(self, request_id: str) -> bool:
        return bool(await self.pool.fetchval("SELECT 1 FROM backup_logs WHERE request_id = $1 AND status = ANY($2)",
                                             request_id, [BackupStatus.SUCCESS, BackupStatus.EXPIRED]))

    async def expire(self, request_id: str, reason: str) -> None:
        await self.pool.execute("INSERT INTO backup_logs (trigger, request_id, status, error, finished_at)"
                                " VALUES ('manual', $1, $2, $3, now())", request_id, BackupStatus.EXPIRED, reason)

    async def fail(self, log_id: int, reason: str, object_key: str) -> None:
        await self.pool.execute("UPDATE backup_logs SET status = $2, error = $3, object_key = $4,"
                                " finished_at = now() WHERE id = $1", log_id, BackupStatus.FAILED, reason, object_key)

    async def succeed(self, log_id: int, object_key: str, size_bytes: int, sha256: str) -> None:
        await self.pool.execute(
            "UPDATE backup_logs SET status = $2, object_key = $3, size_bytes = $4, sha256 = $5,"
            " finished_at = now() WHERE id = $1", log_id, BackupStatus.SUCCESS, object_key, size_bytes, sha256)

    async def last_success(self) -> datetime | None:
        """When the newest successful backup finished, whichever replica ran it."""
        finished: datetime | None = await self.pool.fetchval(
            "SELECT max(finished_at) FROM backup_logs WHERE status = $1", BackupStatus.SUCCESS)
        return finished
