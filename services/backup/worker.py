"""The backup use case: one run at a time across replicas, each run logged, verified, announced, and
followed by retention."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from services.backup.pipeline import BackupError, dump_and_upload, restore, verify
from services.backup.retention import to_delete
from services.backup.s3_backup_store import BackupExists, Manifest, S3BackupStore, backup_name
from shared.events import Alert, BackupCompleted, BackupRequested

log = logging.getLogger(__name__)

BACKUP_LOCK = 0x6377_6261_636B  # "cwback"


class BackupBusy(Exception):
    """Another replica is running a backup: the trigger is retried later."""


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


async def table_row_counts(database_url: str) -> dict[str, int]:
    conn = await asyncpg.connect(database_url)
    try:
        tables = await conn.fetch("SELECT schemaname, relname FROM pg_stat_user_tables ORDER BY 1, 2")
        return {f"{t['schemaname']}.{t['relname']}": await conn.fetchval(
            f'SELECT count(*) FROM "{t["schemaname"]}"."{t["relname"]}"') for t in tables}
    finally:
        await conn.close()


class BackupWorker:
    def __init__(self, pool: asyncpg.Pool, store: S3BackupStore, database_url: str, retention_days: int,
                 keep_last: int, pg_dump: str, pg_restore: str,
                 publish_completed: Callable[[BackupCompleted], Awaitable],
                 publish_alert: Callable[[Alert], Awaitable],
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.pool = pool
        self.store = store
        self.database_url = database_url
        self.retention = timedelta(days=retention_days)
        self.keep_last = keep_last
        self.pg_dump = pg_dump
        self.pg_restore = pg_restore
        self.publish_completed = publish_completed
        self.publish_alert = publish_alert
        self.clock = clock

    async def run_request(self, request: BackupRequested, ttl: timedelta) -> str | None:
        """A backup asked for by `costwarden backup run`: run it, unless it waited longer than `ttl` (it
        may have been asked against another database, and nobody is waiting for it any more), or this
        request was already handled (a redelivery)."""
        if await self.pool.fetchval("SELECT 1 FROM backup_logs WHERE request_id = $1"
                                    " AND status IN ('success', 'expired')", request.id):
            log.info("backup request %s was already handled; skipped", request.id)
            return None
        waited = self.clock() - request.occurred_at
        if waited > ttl:
            reason = (f"request expired: it waited {int(waited.total_seconds())} s for a backup worker, longer "
                      f"than BACKUP_REQUEST_TTL_S ({int(ttl.total_seconds())} s); ask again")
            await self.pool.execute("INSERT INTO backup_logs (trigger, request_id, status, error, finished_at)"
                                    " VALUES ('manual', $1, 'expired', $2, now())", request.id, reason)
            log.warning("backup request %s not run: %s", request.id, reason)
            return "expired"
        return await self.run("manual", request_id=request.id, restore_test=request.restore_test)

    async def run(self, trigger: str, slot: str | None = None, request_id: str | None = None,
                  restore_test: bool = False) -> str | None:
        """Run one backup unless another replica is running one (BackupBusy) or this slot already ran
        (returns None). Returns the final status."""
        async with self.pool.acquire() as lock_conn:
            if not await lock_conn.fetchval("SELECT pg_try_advisory_lock($1)", BACKUP_LOCK):
                raise BackupBusy()
            try:
                log_id = await self.pool.fetchval(
                    "INSERT INTO backup_logs (trigger, slot, request_id, status) VALUES ($1, $2, $3, 'running')"
                    " ON CONFLICT (slot) DO NOTHING RETURNING id", trigger, slot, request_id)
                if log_id is None:
                    log.info("backup slot %s already ran; skipped", slot)
                    return None
                return await self._run_logged(log_id, restore_test)
            finally:
                await lock_conn.execute("SELECT pg_advisory_unlock($1)", BACKUP_LOCK)

    async def _run_logged(self, log_id: int, restore_test: bool) -> str:
        started = self.clock()
        began = time.monotonic()
        name = backup_name(started)
        try:
            await asyncio.to_thread(self.store.check_bucket)
            uploaded = await asyncio.to_thread(dump_and_upload, self.database_url, self.store, name, self.pg_dump)
            await asyncio.to_thread(self.store.set_metadata, name, {
                "sha256": uploaded.sha256, "size": str(uploaded.size_bytes), "database": self._database_name()})
            entries = await asyncio.to_thread(verify, self.store, name, uploaded, self.pg_restore)
            tables = await self._restore_test(name, uploaded.sha256) if restore_test else None
            manifest = Manifest(name=name, key=self.store.key(name), sha256=uploaded.sha256,
                                size_bytes=uploaded.size_bytes, started_at=started.isoformat(),
                                finished_at=self.clock().isoformat(), database=self._database_name(), tables=tables)
            await asyncio.to_thread(self.store.write_manifest, manifest)
        except Exception as exc:
            reason = describe(exc)
            await self.pool.execute("UPDATE backup_logs SET status = 'failed', error = $2, object_key = $3,"
                                    " finished_at = now() WHERE id = $1", log_id, reason, self.store.key(name))
            log.error("backup %s failed: %s", name, reason)
            await self.publish_alert(Alert(
                key=f"backup:failed:{name}", source="backup", severity="critical", title="Database backup failed",
                text=f"CRITICAL: database backup {name} failed: {reason}", window=started.isoformat()))
            return "failed"
        await self.pool.execute(
            "UPDATE backup_logs SET status = 'success', object_key = $2, size_bytes = $3, sha256 = $4,"
            " finished_at = now() WHERE id = $1", log_id, manifest.key, uploaded.size_bytes, uploaded.sha256)
        log.info("backup %s done: %d bytes, %d entries, sha256 %s", name, uploaded.size_bytes, entries, uploaded.sha256)
        await self.publish_completed(BackupCompleted(name=name, key=manifest.key, sha256=uploaded.sha256,
                                                     size_bytes=uploaded.size_bytes,
                                                     duration_s=round(time.monotonic() - began, 3), tables=tables))
        await self.apply_retention()
        return "success"

    def _database_name(self) -> str:
        return urlsplit(self.database_url).path.lstrip("/")

    async def _restore_test(self, name: str, sha256: str) -> dict[str, int]:
        """Restore into a scratch database and count the rows of every table."""
        scratch = f"costwarden_restore_test_{uuid.uuid4().hex[:8]}"
        admin = await asyncpg.connect(with_database(self.database_url, "postgres"))
        await admin.execute(f'CREATE DATABASE "{scratch}"')
        try:
            target = with_database(self.database_url, scratch)
            await asyncio.to_thread(restore, self.store, name, target, sha256, False, self.pg_restore)
            return await table_row_counts(target)
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)')
            await admin.close()

    async def apply_retention(self, now: datetime | None = None) -> list[str]:
        backups = await asyncio.to_thread(self.store.list_backups)
        doomed = to_delete(backups, now or self.clock(), self.retention, self.keep_last)
        for name in doomed:
            await asyncio.to_thread(self.store.delete, name)
        if doomed:
            log.info("retention deleted %s", ", ".join(doomed))
        return doomed


def describe(exc: BaseException) -> str:
    if isinstance(exc, BackupError | BackupExists):
        return str(exc)
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"S3 {exc.operation_name} failed: {error.get('Code', 'error')} {error.get('Message', '')}".strip()
    if isinstance(exc, BotoCoreError):
        return f"S3 unreachable: {type(exc).__name__}"
    return f"{type(exc).__name__}: {exc}"[:500]
