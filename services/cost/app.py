"""Composition root of the cost service: the ledger consumer, cost.query, the alert outbox sweep
and retention, wired to Postgres and the bus."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncpg
from faststream.asgi import AsgiFastStream

from services.cost.pg_cost_queries import PgCostQueries
from services.cost.pg_usage_ledger import PgUsageLedger
from services.cost.recorder import CostRecorder
from shared.batch_consumer import BatchConsumer
from shared.bus import jetstream, make_broker
from shared.cost_query import CostQuery
from shared.events import Alert, LlmCompleted
from shared.logs import configure_logging
from shared.service_app import make_service_app
from shared.settings import Settings, get_settings
from shared.subjects import COST_QUERY, LLM_COMPLETED, alert_subject, ensure_streams

SERVICE = "cost"
SWEEP_INTERVAL_S = 10.0
RETENTION_INTERVAL_S = 6 * 3600.0
LEDGER_BATCH = 4000  # larger batches share one rollup upsert among more events (see make bench)

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> AsgiFastStream:
    settings = settings or get_settings()
    configure_logging(SERVICE, settings.log_level, settings.log_format)
    config = settings.file_config()
    broker = make_broker(settings.nats_url, SERVICE)
    state: dict[str, Any] = {"tasks": []}

    async def publish_alert(alert: Alert) -> None:
        await jetstream(broker).publish(alert_subject(alert.source, alert.severity),
                                        alert.model_dump_json().encode(), stream="ALERTS",
                                        headers={"Nats-Msg-Id": alert.key})

    @broker.subscriber(COST_QUERY, queue=SERVICE, title="cost.query",
                       description="Current spend or analytics for a time range (request-reply).")
    async def answer_query(query: CostQuery) -> dict[str, Any]:
        result = await state["queries"].answer(query)
        return result.model_dump(mode="json")

    async def postgres_ready() -> None:
        await state["pool"].fetchval("SELECT 1")

    app = make_service_app(broker, SERVICE, readiness=[("postgres", postgres_ready)])

    async def every(interval_s: float, job, name: str) -> None:
        while True:
            try:
                await job()
            except Exception as exc:  # a failed round is retried next interval; the loop must not die
                log.warning("%s failed: %s", name, type(exc).__name__)
            await asyncio.sleep(interval_s)

    @app.on_startup
    async def connect() -> None:
        await broker.connect()
        await ensure_streams(jetstream(broker))
        pool = await asyncpg.create_pool(settings.database_url, min_size=0, max_size=6)
        ledger = PgUsageLedger(pool)
        state.update(pool=pool, ledger=ledger, queries=PgCostQueries(pool),
                     recorder=CostRecorder(ledger, config.price_catalog(), config.thresholds, publish_alert))

    @app.after_startup
    async def start_work() -> None:
        consumer = BatchConsumer(jetstream(broker), stream="LLM", subject=LLM_COMPLETED, durable="cost-ledger",
                                 model=LlmCompleted, store=state["recorder"].record, service=SERVICE,
                                 batch_size=LEDGER_BATCH)
        await consumer.start()
        state["consumer"] = consumer

        async def retention() -> None:
            dropped = await state["ledger"].cleanup(config.retention_days)
            if dropped:
                log.info("retention dropped partitions %s", ", ".join(dropped))

        state["tasks"] = [
            asyncio.create_task(every(SWEEP_INTERVAL_S, state["recorder"].publish_pending, "alert sweep")),
            asyncio.create_task(every(RETENTION_INTERVAL_S, retention, "retention")),
        ]

    @app.on_shutdown
    async def stop_work() -> None:
        for task in state["tasks"]:
            task.cancel()
        if "consumer" in state:
            await state["consumer"].stop()

    @app.after_shutdown
    async def close() -> None:
        if "pool" in state:
            await state["pool"].close()

    return app
