"""Composition root of the limiter: settings, Redis, Postgres and the bus wired to the use case."""

from __future__ import annotations

import logging

import asyncpg
import nats.errors
from faststream.asgi import AsgiFastStream
from redis.asyncio import Redis

from services.limiter.limiter import Limiter, violation_of
from services.limiter.pg_violation_log import PgViolationLog
from services.limiter.policy import LimitPolicy
from services.limiter.redis_limiter_store import RedisLimiterStore
from shared.batch_consumer import BatchConsumer
from shared.bus import jetstream, make_broker, nats_client
from shared.events import LimitDecision, LimitRequest, LimitViolation, LlmCompleted
from shared.logs import configure_logging
from shared.request_responder import RequestResponder
from shared.service_app import make_service_app
from shared.settings import Settings, get_settings
from shared.subjects import LIMIT_VIOLATION, LIMITER_QUEUE, LLM_COMPLETED, LLM_REQUEST, ensure_streams

SERVICE = "limiter"
log = logging.getLogger(__name__)
DECISION_WORKERS = 64
# Settlements and violation records wait this long to fill a batch: fewer, larger round trips that
# take less time away from decisions on the same event loop.
BACKGROUND_LINGER_S = 0.2


def create_app(settings: Settings | None = None) -> AsgiFastStream:
    settings = settings or get_settings()
    configure_logging(SERVICE, settings.log_level, settings.log_format)
    config = settings.file_config()
    broker = make_broker(settings.nats_url, SERVICE)
    redis = Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.limiter_redis_timeout_s,
        socket_connect_timeout=settings.limiter_redis_timeout_s,
        max_connections=DECISION_WORKERS * 2,
    )
    policy = LimitPolicy(config.tiers, config.price_catalog(),
                         settings.default_max_tokens, settings.reservation_cap_tokens)
    limiter = Limiter(policy, RedisLimiterStore(redis, settings.reservation_ttl_s), settings.limiter_failure_mode)
    consumers: list[BatchConsumer | RequestResponder] = []
    pools: list[asyncpg.Pool] = []

    async def decide(request: LimitRequest) -> LimitDecision:
        decision = await limiter.decide(request)
        if not decision.allowed and decision.limited_by != "unavailable":
            violation = violation_of(request, decision)
            try:
                await jetstream(broker).publish(LIMIT_VIOLATION, violation.model_dump_json().encode(),
                                                stream="LIMITS", headers={"Nats-Msg-Id": violation.id})
            except (nats.errors.Error, TimeoutError) as exc:  # the caller still gets its denial
                log.warning("could not publish limit.violation for %s: %s", request.request_id, type(exc).__name__)
        return decision

    async def redis_ready() -> None:
        await redis.ping()

    app = make_service_app(broker, SERVICE, readiness=[("redis", redis_ready)])

    @app.on_startup
    async def connect() -> None:
        await broker.connect()
        await ensure_streams(jetstream(broker))
        pools.append(await asyncpg.create_pool(settings.database_url, min_size=0, max_size=4))

    @app.after_startup
    async def start_consumers() -> None:
        js = jetstream(broker)
        consumers.extend([
            RequestResponder(nats_client(broker), js, subject=LLM_REQUEST, queue=LIMITER_QUEUE,
                             model=LimitRequest, handle=decide, service=SERVICE, max_in_flight=DECISION_WORKERS),
            BatchConsumer(js, stream="LLM", subject=LLM_COMPLETED, durable="limiter-settlement",
                          model=LlmCompleted, store=limiter.settle, service=SERVICE, linger_s=BACKGROUND_LINGER_S),
            BatchConsumer(js, stream="LIMITS", subject=LIMIT_VIOLATION, durable="limiter-violations",
                          model=LimitViolation, store=PgViolationLog(pools[0]).store, service=SERVICE,
                          linger_s=BACKGROUND_LINGER_S),
        ])
        for consumer in consumers:
            await consumer.start()

    @app.on_shutdown
    async def stop_consumers() -> None:
        for consumer in consumers:
            await consumer.stop()

    @app.after_shutdown
    async def close() -> None:
        for pool in pools:
            await pool.close()
        await redis.aclose()

    return app
