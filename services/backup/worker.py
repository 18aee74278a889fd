"""The backup use case: one run at a time across replicas, each run logged, verified, announced, and
followed by retention. The run log, the object store and the dump pipeline are ports; their adapters
(pg_backup_log.py, s3_backup_store.py, pg_dump_pipeline.py) turn their libraries' errors into
BackupError, whose message is a clear, secret-free reason."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Literal, Protocol

from services.backup.retention import StoredBackup, to_delete
from shared.events import Alert, BackupCompleted, BackupRequested

log = logging.getLogger(__name__)


Trigger = Literal["schedule", "manual"]


class BackupStatus(StrEnum):
    """A run's status, as `backup_logs` keeps it."""

    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    EXPIRED = "expired"  # a request that waited longer than BACKUP_REQUEST_TTL_S, not run


class BackupError(RuntimeError):
    """A clear, secret-free reason why a backup or restore did not happen."""


class BackupExists(BackupError):
    """The store already holds an object of this name: it is never replaced."""


class BackupBusy(Exception):
    """Another replica is running a backup: the trigger is retried later."""


@dataclass(frozen=True)
class Uploaded:
    sha256: str
    size_bytes: int


@dataclass(frozen=True)
class Manifest:
    """Written last, beside the object: a backup without its manifest is not complete."""

    name: str
    key: str
    sha256: str
    size_bytes: int
    started_at: str
    finished_at: str
    database: str
    tables: dict[str, int] | None = None


class BackupLog(Protocol):
    def exclusive(self) -> AbstractAsyncContextManager[bool]:
        """Held while a backup runs: True for the one replica that may run one now."""
        ...

    async def start(self, trigger: Trigger, slot: str | None, request_id: str | None) -> int | None:
        """A `running` row; None when this schedule slot already ran."""
        ...

    async def handled(self, request_id: str) -> bool: ...

    async def expire(self, request_id: str, reason: str) -> None: ...

    async def fail(self, log_id: int, reason: str, object_key: str) -> None: ...

    async def succeed(self, log_id: int, object_key: str, size_bytes: int, sha256: str) -> None: ...


class BackupStore(Protocol):
    """Blocking calls (the worker runs them in a thread)."""

    def check_bucket(self) -> None: ...

    def new_name(self, at: datetime) -> str:
        """A name no backup has: it sorts by time and is never reused."""
        ...

    def key(self, name: str) -> str: ...

    def set_metadata(self, name: str, metadata: dict[str, str]) -> None: ...

    def write_manifest(self, manifest: Manifest) -> None: ...

    def list_backups(self) -> list[StoredBackup]: ...

    def delete(self, name: str) -> None: ...


class DumpPipeline(Protocol):
    database: str

    def dump_and_upload(self, name: str) -> Uploaded:
        """Blocking: the database dumped, compressed and uploaded under `name`."""
        ...

    def verify(self, name: str, uploaded: Uploaded) -> int:
        """Blocking: the object read back and proved readable; its entry count."""
        ...

    async def restore_test(self, name: str, sha256: str) -> dict[str, int]:
        """Restored into a scratch database: the row count of every table."""
        ...


class BackupWorker:
    def __init__(self, runs: BackupLog, store: BackupStore, pipeline: DumpPipeline, retention_days: int,
                 keep_last: int, publish_completed: Callable[[BackupCompleted], Awaitable[None]],
                 publish_alert: Callable[[Alert], Awaitable[None]],
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.runs = runs
        self.store = store
        self.pipeline = pipeline
        self.retention = timedelta(days=retention_days)
        self.keep_last = keep_last
        self.publish_completed = publish_completed
        self.publish_alert = publish_alert
        self.clock = clock

    async def run_request(self, request: BackupRequested, ttl: timedelta) -> BackupStatus | None:
        """A backup asked for by `costwarden backup run`: run it, unless it waited longer than `ttl` (it
        may have been asked against another database, and nobody is waiting for it any more), or this
        request was already handled (a redelivery)."""
        if await self.runs.handled(request.id):
            log.info("backup request %s was already handled; skipped", request.id)
            return None
        waited = self.clock() - request.occurred_at
        if waited > ttl:
            reason = (f"request expired: it waited {int(waited.total_seconds())} s for a backup worker, longer "
                      f"than BACKUP_REQUEST_TTL_S ({int(ttl.total_seconds())} s); ask again")
            await self.runs.expire(request.id, reason)
            log.warning("backup request %s not run: %s", request.id, reason)
            return BackupStatus.EXPIRED
        return await self.run("manual", request_id=request.id, restore_test=request.restore_test)

    async def run(self, trigger: Trigger, slot: str | None = None, request_id: str | None = None,
                  restore_test: bool = False) -> BackupStatus | None:
        """Run one backup unless another replica is running one (BackupBusy) or this slot already ran
        (returns None). Returns the final status."""
        async with self.runs.exclusive() as mine:
            if not mine:
                raise BackupBusy()
            log_id = await self.runs.start(trigger, slot, request_id)
            if log_id is None:
                log.info("backup slot %s already ran; skipped", slot)
                return None
            return await self._run_logged(log_id, restore_test)

    async def _run_logged(self, log_id: int, restore_test: bool) -> BackupStatus:
        started = self.clock()
        began = time.monotonic()
        name = self.store.new_name(started)
        try:
            uploaded, tables, entries = await self._back_up(name, restore_test)
            manifest = Manifest(name=name, key=self.store.key(name), sha256=uploaded.sha256,
                                size_bytes=uploaded.size_bytes, started_at=started.isoformat(),
                                finished_at=self.clock().isoformat(), database=self.pipeline.database, tables=tables)
            await asyncio.to_thread(self.store.write_manifest, manifest)
        except Exception as exc:  # noqa: BLE001 - every failure is recorded, alerted and reported
            reason = str(exc) if isinstance(exc, BackupError) else f"{type(exc).__name__}: {exc}"[:500]
            await self.runs.fail(log_id, reason, self.store.key(name))
            log.error("backup %s failed: %s", name, reason)
            await self.publish_alert(Alert(
                key=f"backup:failed:{name}", source="backup", severity="critical", title="Database backup failed",
                text=f"CRITICAL: database backup {name} failed: {reason}", window=started.isoformat()))
            return BackupStatus.FAILED
        await self.runs.succeed(log_id, manifest.key, uploaded.size_bytes, uploaded.sha256)
        log.info("backup %s done: %d bytes, %d entries, sha256 %s", name, uploaded.size_bytes, entries, uploaded.sha256)
        await self.publish_completed(BackupCompleted(name=name, key=manifest.key, sha256=uploaded.sha256,
                                                     size_bytes=uploaded.size_bytes,
                                                     duration_s=round(time.monotonic() - began, 3), tables=tables))
        await self.apply_retention()
        return BackupStatus.SUCCESS

    async def _back_up(self, name: str, restore_test: bool) -> tuple[Uploaded, dict[str, int] | None, int]:
        """Upload, record the checksum on the object, read it back; restore it when asked."""
        await asyncio.to_thread(self.store.check_bucket)
        uploaded = await asyncio.to_thread(self.pipeline.dump_and_upload, name)
        await asyncio.to_thread(self.store.set_metadata, name, {
            "sha256": uploaded.sha256, "size": str(uploaded.size_bytes), "database": self.pipeline.database})
        entries = await asyncio.to_thread(self.pipeline.verify, name, uploaded)
        tables = await self.pipeline.restore_test(name, uploaded.sha256) if restore_test else None
        return uploaded, tables, entries

    async def apply_retention(self, now: datetime | None = None) -> list[str]:
        backups = await asyncio.to_thread(self.store.list_backups)
        doomed = to_delete(backups, now or self.clock(), self.retention, self.keep_last)
        for name in doomed:
            await asyncio.to_thread(self.store.delete, name)
        if doomed:
            log.info("retention deleted %s", ", ".join(doomed))
        return doomed
