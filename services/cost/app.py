"""Composition root of the cost service: the ledger consumer, cost.query, the alert outbox sweep
and retention, wired to Postgres and the bus."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import asyncpg
from faststream.asgi import AsgiFastStream
from faststream.nats import NatsBroker

from services.cost.pg_cost_queries import PgCostQueries
from services.cost.pg_usage_ledger import PgUsageLedger
from services.cost.query_router import query_router
from services.cost.recorder import CostRecorder
from services.cost.settings import CostConfig, CostSettings
from shared.batch_consumer import BatchConsumer
from shared.bus import jetstream, make_broker, publish_alert
from shared.cost_query import CostQueries
from shared.events import Alert, LlmCompleted
from shared.logs import configure_logging
from shared.periodic import every
from shared.service_app import lifecycle_app
from shared.subjects import LLM_COMPLETED, bind_streams, streams_bound_by

SERVICE = "cost"
SWEEP_INTERVAL_S = 10.0
RETENTION_INTERVAL_S = 6 * 3600.0
LEDGER_BATCH = 4000  # larger batches share one rollup upsert among more events (see make bench)

log = logging.getLogger(__name__)


@dataclass
class CostService:
    """The service's resources, opened at start-up and closed at shutdown in reverse order."""

    settings: CostSettings
    config: CostConfig
    broker: NatsBroker
    pool: asyncpg.Pool | None = None
    ledger: PgUsageLedger | None = None
    queries: CostQueries | None = None
    recorder: CostRecorder | None = None
    consumer: BatchConsumer | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def publish_alert(self, alert: Alert) -> None:
        await publish_alert(jetstream(self.broker), alert)

    async def connect(self) -> None:
        await self.broker.connect()
        await bind_streams(jetstream(self.broker), streams_bound_by(SERVICE))
        self.pool = await asyncpg.create_pool(self.settings.database_url, min_size=0, max_size=6)
        self.ledger = PgUsageLedger(self.pool)
        self.queries = PgCostQueries(self.pool)
        self.recorder = CostRecorder(self.ledger, self.config.price_catalog(), self.config.thresholds,
                                     self.publish_alert)

    async def start(self) -> None:
        assert self.recorder is not None
        self.consumer = BatchConsumer(jetstream(self.broker), subject=LLM_COMPLETED,
                                      durable="cost-ledger", model=LlmCompleted, store=self.recorder.record,
                                      service=SERVICE, batch_size=LEDGER_BATCH)
        await self.consumer.start()
        self.tasks = [asyncio.create_task(every(SWEEP_INTERVAL_S, self.recorder.publish_pending, "alert sweep")),
                      asyncio.create_task(every(RETENTION_INTERVAL_S, self.retention, "retention"))]

    async def retention(self) -> None:
        assert self.ledger is not None
        dropped = await self.ledger.cleanup(self.config.retention_days)
        if dropped:
            log.info("retention dropped partitions %s", ", ".join(dropped))

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        if self.consumer is not None:
            await self.consumer.stop()

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()

    def read_side(self) -> CostQueries:
        assert self.queries is not None
        return self.queries

    async def postgres_ready(self) -> None:
        assert self.pool is not None
        await self.pool.fetchval("SELECT 1")


def create_app(settings: CostSettings | None = None) -> AsgiFastStream:
    settings = settings or CostSettings()
    configure_logging(SERVICE, settings.log_level, settings.log_format)
    service = CostService(settings, settings.file_config(), make_broker(settings, SERVICE))
    service.broker.include_router(query_router(service.read_side))
    return lifecycle_app(service, SERVICE, readiness=[("postgres", service.postgres_ready)])
