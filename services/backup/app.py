"""Composition root of the backup worker: the cron scheduler, the two triggers, S3 and Postgres."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import timedelta

import asyncpg
from faststream.asgi import AsgiFastStream
from faststream.nats import NatsBroker
from prometheus_client import Gauge

from services.backup.pg_backup_log import PgBackupLog
from services.backup.pg_dump_pipeline import PgDumpPipeline
from services.backup.s3_backup_store import S3BackupStore
from services.backup.scheduler import run_schedule
from services.backup.settings import BackupSettings
from services.backup.worker import BackupWorker
from shared.backup_requests import WORKER_DURABLE
from shared.batch_consumer import BatchConsumer
from shared.bus import jetstream, make_broker, publish_alert, publish_event
from shared.events import Alert, BackupCompleted, BackupRequested, BackupTick
from shared.logs import configure_logging
from shared.periodic import every
from shared.service_app import lifecycle_app
from shared.subjects import BACKUP_COMPLETED, BACKUP_REQUESTED, SCHEDULE_BACKUP, bind_streams, streams_bound_by

SERVICE = "backup"
BACKUP_ACK_WAIT_S = 60.0  # a running backup keeps its trigger "in progress" well within this
LAST_SUCCESS_REFRESH_S = 60.0
LAST_SUCCESS = Gauge("costwarden_backup_last_success_timestamp_seconds",
                     "When the newest successful backup finished (Unix time; 0 before the first)")

log = logging.getLogger(__name__)


def make_store(settings: BackupSettings) -> S3BackupStore:
    if not settings.s3_backup_bucket:
        raise SystemExit("S3_BACKUP_BUCKET is not set")
    return S3BackupStore(settings.s3_backup_bucket, settings.s3_backup_prefix, settings.aws_region,
                         settings.backup_sse, settings.backup_kms_key_id, settings.backup_storage_class,
                         settings.backup_part_size_mb * 1024 * 1024)


class BackupService:
    """The service's resources, opened at start-up and closed at shutdown in reverse order."""

    def __init__(self, settings: BackupSettings, broker: NatsBroker) -> None:
        self.settings = settings
        self.broker = broker
        self.pool: asyncpg.Pool | None = None
        self.worker: BackupWorker | None = None
        self.consumers: list[BatchConsumer] = []
        self.tasks: list[asyncio.Task[None]] = []

    async def publish_completed(self, event: BackupCompleted) -> None:
        await publish_event(jetstream(self.broker), BACKUP_COMPLETED, event)

    async def publish_alert(self, alert: Alert) -> None:
        await publish_alert(jetstream(self.broker), alert)

    async def publish_tick(self, tick: BackupTick) -> None:
        await publish_event(jetstream(self.broker), SCHEDULE_BACKUP, tick, f"backup:{tick.slot}")

    async def connect(self) -> None:
        settings = self.settings
        await self.broker.connect()
        await bind_streams(jetstream(self.broker), streams_bound_by(SERVICE))
        self.pool = await asyncpg.create_pool(settings.database_url, min_size=0, max_size=4)
        store = make_store(settings)
        pipeline = PgDumpPipeline(settings.backup_database_url or settings.database_url, store,
                                  settings.pg_dump_path, settings.pg_restore_path)
        self.worker = BackupWorker(PgBackupLog(self.pool), store, pipeline, settings.backup_retention_days,
                                   settings.backup_keep_last, self.publish_completed, self.publish_alert)

    async def on_ticks(self, ticks: Sequence[BackupTick]) -> None:
        assert self.worker is not None
        for tick in ticks:
            await self.worker.run("schedule", slot=tick.slot)
        await self.export_last_success()

    async def on_requests(self, requests: Sequence[BackupRequested]) -> None:
        assert self.worker is not None
        for request in requests:
            await self.worker.run_request(request, timedelta(seconds=self.settings.backup_request_ttl_s))
        await self.export_last_success()

    async def start(self) -> None:
        js = jetstream(self.broker)
        self.consumers = [
            BatchConsumer(js, subject=SCHEDULE_BACKUP, durable="backup-schedule", model=BackupTick,
                          store=self.on_ticks, service=SERVICE, batch_size=1, ack_wait_s=BACKUP_ACK_WAIT_S),
            BatchConsumer(js, subject=BACKUP_REQUESTED, durable=WORKER_DURABLE,
                          model=BackupRequested, store=self.on_requests, service=SERVICE, batch_size=1,
                          ack_wait_s=BACKUP_ACK_WAIT_S),
        ]
        for consumer in self.consumers:
            await consumer.start()
        self.tasks.append(asyncio.create_task(run_schedule(self.settings.backup_schedule, self.publish_tick)))
        self.tasks.append(asyncio.create_task(every(LAST_SUCCESS_REFRESH_S, self.export_last_success,
                                                    "last backup lookup")))

    async def export_last_success(self) -> None:
        """Every replica exports the newest success from the shared log, so the figure survives restarts
        and does not depend on which replica ran the backup (0 until the first one)."""
        assert self.pool is not None
        try:
            finished = await PgBackupLog(self.pool).last_success()
        except (asyncpg.PostgresError, OSError) as exc:  # the figure stays as it was until the next round
            log.warning("could not read the last successful backup: %s", type(exc).__name__)
            return
        LAST_SUCCESS.set(finished.timestamp() if finished else 0)

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for consumer in self.consumers:
            await consumer.stop()

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()

    async def postgres_ready(self) -> None:
        assert self.pool is not None
        await self.pool.fetchval("SELECT 1")


def create_app(settings: BackupSettings | None = None) -> AsgiFastStream:
    settings = settings or BackupSettings()
    configure_logging(SERVICE, settings.log_level, settings.log_format)
    service = BackupService(settings, make_broker(settings, SERVICE))
    return lifecycle_app(service, SERVICE, readiness=[("postgres", service.postgres_ready)])
