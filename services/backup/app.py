"""Composition root of the backup worker: the cron scheduler, the two triggers, S3 and Postgres."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from croniter import croniter
from faststream.asgi import AsgiFastStream

from services.backup.store import S3BackupStore
from services.backup.worker import BackupWorker
from shared.batch_consumer import BatchConsumer
from shared.bus import jetstream, make_broker
from shared.events import Alert, BackupCompleted, BackupRequested, BackupTick
from shared.logs import configure_logging
from shared.service_app import make_service_app
from shared.settings import Settings, get_settings
from shared.subjects import BACKUP_COMPLETED, BACKUP_REQUESTED, SCHEDULE_BACKUP, alert_subject, ensure_streams

SERVICE = "backup"
BACKUP_ACK_WAIT_S = 60.0  # a running backup keeps its trigger "in progress" well within this

log = logging.getLogger(__name__)


def make_store(settings: Settings) -> S3BackupStore:
    if not settings.s3_backup_bucket:
        raise SystemExit("S3_BACKUP_BUCKET is not set")
    return S3BackupStore(settings.s3_backup_bucket, settings.s3_backup_prefix, settings.aws_region,
                         settings.backup_sse, settings.backup_kms_key_id, settings.backup_storage_class,
                         settings.backup_part_size_mb * 1024 * 1024)


def next_slot(schedule: str, after: datetime) -> datetime:
    return croniter(schedule, after).get_next(datetime)


def create_app(settings: Settings | None = None) -> AsgiFastStream:
    settings = settings or get_settings()
    configure_logging(SERVICE, settings.log_level, settings.log_format)
    broker = make_broker(settings.nats_url, SERVICE)
    state: dict[str, Any] = {"consumers": [], "tasks": []}

    async def postgres_ready() -> None:
        await state["pool"].fetchval("SELECT 1")

    app = make_service_app(broker, SERVICE, readiness=[("postgres", postgres_ready)])

    async def publish_completed(event: BackupCompleted) -> None:
        await jetstream(broker).publish(BACKUP_COMPLETED, event.model_dump_json().encode(), stream="BACKUP")

    async def publish_alert(alert: Alert) -> None:
        await jetstream(broker).publish(alert_subject(alert.source, alert.severity), alert.model_dump_json().encode(),
                                        stream="ALERTS", headers={"Nats-Msg-Id": alert.key})

    async def on_ticks(ticks: list[BackupTick]) -> None:
        for tick in ticks:
            await state["worker"].run("schedule", slot=tick.slot)

    async def on_requests(requests: list[BackupRequested]) -> None:
        for request in requests:
            await state["worker"].run_request(request, timedelta(seconds=settings.backup_request_ttl_s))

    async def scheduler() -> None:
        """Publish one tick per cron slot; every replica does, and the slot as Nats-Msg-Id keeps one."""
        while True:
            slot = next_slot(settings.backup_schedule, datetime.now(UTC))
            await asyncio.sleep(max(0.0, (slot - datetime.now(UTC)).total_seconds()))
            tick = BackupTick(slot=slot.isoformat())
            try:
                await jetstream(broker).publish(SCHEDULE_BACKUP, tick.model_dump_json().encode(), stream="SCHEDULE",
                                                headers={"Nats-Msg-Id": f"backup:{tick.slot}"})
            except Exception as exc:  # the next slot is tried all the same
                log.error("could not publish the backup tick for %s: %s", tick.slot, type(exc).__name__)

    @app.on_startup
    async def connect() -> None:
        await broker.connect()
        await ensure_streams(jetstream(broker))
        database_url = settings.backup_database_url or settings.database_url
        pool = await asyncpg.create_pool(settings.database_url, min_size=0, max_size=4)
        state.update(pool=pool, worker=BackupWorker(
            pool, make_store(settings), database_url, settings.backup_retention_days, settings.backup_keep_last,
            settings.pg_dump_path, settings.pg_restore_path, publish_completed, publish_alert))

    @app.after_startup
    async def start_work() -> None:
        js = jetstream(broker)
        for subject, stream, durable, model, handler in (
            (SCHEDULE_BACKUP, "SCHEDULE", "backup-schedule", BackupTick, on_ticks),
            (BACKUP_REQUESTED, "BACKUP", "backup-requests", BackupRequested, on_requests),
        ):
            consumer = BatchConsumer(js, stream=stream, subject=subject, durable=durable, model=model, store=handler,
                                     service=SERVICE, batch_size=1, ack_wait_s=BACKUP_ACK_WAIT_S)
            await consumer.start()
            state["consumers"].append(consumer)
        state["tasks"].append(asyncio.create_task(scheduler()))

    @app.on_shutdown
    async def stop_work() -> None:
        for task in state["tasks"]:
            task.cancel()
        for consumer in state["consumers"]:
            await consumer.stop()

    @app.after_shutdown
    async def close() -> None:
        if "pool" in state:
            await state["pool"].close()

    return app
