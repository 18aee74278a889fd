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
from services.cost.pg_scope_limits import PgScopeLimits
from services.cost.pg_usage_ledger import PgUsageLedger
from services.cost.query_router import query_router
from services.cost.recorder import CostRecorder
from services.cost.settings import CostConfig, CostSettings
from shared.batch_consumer import BatchConsumer
from shared.bus import jetstream, make_broker, nats_client, publish_alert
from shared.cost_query import CostQueries
from shared.events import Alert, LlmCompleted
from shared.limits import Scope, ScopeLimits
from shared.logs import configure_logging
from shared.periodic import Coalesced, every
from shared.service_app import lifecycle_app
from shared.subjects import LIMITS_CHANGED, LLM_COMPLETED, bind_streams, streams_bound_by

SERVICE = "cost"
SWEEP_INTERVAL_S = 10.0
RETENTION_INTERVAL_S = 6 * 3600.0
LEDGER_BATCH = 4000  # larger batches share one rollup upsert among more events (see make bench)
LIMITS_RELOAD_S = 60.0  # besides limits.changed and every reconnection

log = logging.getLogger(__name__)


@dataclass
class CostService:
    """The service's resources, opened at start-up and closed at shutdown in reverse order."""

    settings: CostSettings
    config: CostConfig
    broker: NatsBroker = field(init=False)
    pool: asyncpg.Pool | None = None
    ledger: PgUsageLedger | None = None
    queries: CostQueries | None = None
    recorder: CostRecorder | None = None
    consumer: BatchConsumer | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    limits: dict[tuple[Scope, str], ScopeLimits] = field(default_factory=dict)
    reload: Coalesced | None = None

    async def publish_alert(self, alert: Alert) -> None:
        await publish_alert(jetstream(self.broker), alert)

    async def connect(self) -> None:
        await self.broker.connect()
        await bind_streams(jetstream(self.broker), streams_bound_by(SERVICE))
        self.pool = await asyncpg.create_pool(self.settings.database_url, min_size=0, max_size=6)
        self.ledger = PgUsageLedger(self.pool)
        self.queries = PgCostQueries(self.pool)
        self.recorder = CostRecorder(self.ledger, self.config.price_catalog(), self.config.thresholds,
                                     self.publish_alert, limits=lambda: self.limits)
        self.reload = Coalesced(self.reload_limits, "limits reload")
        self.reload.ask()  # a batch recorded before they are read raises no budget alert yet

    async def reload_limits(self) -> None:
        assert self.pool is not None
        self.limits = await PgScopeLimits(self.pool).load()

    async def reconnected(self) -> None:
        if self.reload is not None:
            self.reload.ask()

    async def limits_changed(self, msg: object) -> None:
        if self.reload is not None:
            self.reload.ask()

    async def start(self) -> None:
        assert self.recorder is not None
        self.consumer = BatchConsumer(jetstream(self.broker), subject=LLM_COMPLETED,
                                      durable="cost-ledger", model=LlmCompleted, store=self.recorder.record,
                                      service=SERVICE, batch_size=LEDGER_BATCH)
        await nats_client(self.broker).subscribe(LIMITS_CHANGED, cb=self.limits_changed)
        await self.consumer.start()
        self.tasks = [asyncio.create_task(every(SWEEP_INTERVAL_S, self.recorder.publish_pending, "alert sweep")),
                      asyncio.create_task(every(RETENTION_INTERVAL_S, self.retention, "retention")),
                      asyncio.create_task(every(LIMITS_RELOAD_S, self.reload_limits, "limits reload"))]

    async def retention(self) -> None:
        assert self.ledger is not None
        dropped = await self.ledger.cleanup(self.config.retention_days)
        if dropped:
            log.info("retention dropped partitions %s", ", ".join(dropped))

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        if self.reload is not None:
            self.reload.cancel()
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
    service = CostService(settings, settings.file_config())
    service.broker = make_broker(settings, SERVICE, reconnected_cb=service.reconnected)
    service.broker.include_router(query_router(service.read_side))
    return lifecycle_app(service, SERVICE, readiness=[("postgres", service.postgres_ready)])
