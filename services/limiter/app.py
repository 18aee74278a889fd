"""Composition root of the limiter: settings, Redis, Postgres and the bus wired to the use case."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import asyncpg
from faststream.asgi import AsgiFastStream
from prometheus_client import Counter

from services.limiter.jetstream_violation_publisher import JetStreamViolationPublisher
from services.limiter.limiter import Limiter, LimitsUnavailable, StorageUnavailable
from services.limiter.pg_limits_source import PgLimitsSource
from services.limiter.pg_violation_log import PgViolationLog
from services.limiter.policy import LimitPolicy
from services.limiter.redis_limiter_store import RedisLimiterStore
from services.limiter.settings import LimiterSettings
from shared.backoff import retrying
from shared.batch_consumer import BatchConsumer
from shared.bus import jetstream, make_broker, nats_client
from shared.events import LimitDecision, LimitRequest, LimitViolation, LlmCompleted
from shared.logs import configure_logging
from shared.metric_labels import BoundedLabel
from shared.periodic import Coalesced
from shared.redis_client import ready, redis_client
from shared.request_responder import RequestResponder
from shared.service_app import lifecycle_app
from shared.subjects import (
    LIMIT_VIOLATION,
    LIMITER_QUEUE,
    LIMITS_CHANGED,
    LLM_COMPLETED,
    LLM_REQUEST,
    bind_streams,
    streams_bound_by,
)

SERVICE = "limiter"
DECISION_WORKERS = 64
# Settlements and violation records wait this long to fill a batch: fewer, larger round trips that
# take less time away from decisions on the same event loop.
BACKGROUND_LINGER_S = 0.2
DECISIONS = Counter("costwarden_limiter_decisions_total", "Limiter decisions by tier, outcome and reason",
                    ["tier", "outcome", "reason"])
TIER = BoundedLabel(20)
# Limits are reloaded when limits.changed announces a change and when the bus connection comes back (an
# announcement may have been missed); this slow round catches anything else. Until they were read once
# (Postgres down when the limiter starts), they are tried every LIMITS_RETRY_S, and calls are answered in
# LIMITER_FAILURE_MODE.
LIMITS_RELOAD_S = 60.0
LIMITS_RETRY_S = 2.0
LIMITS_PATIENCE_S = 10.0

log = logging.getLogger(__name__)


Decide = Callable[[LimitRequest], Awaitable[LimitDecision]]


def counted(decide: Decide) -> Decide:
    """Count each decision: outcome allowed, denied or unavailable; reason the limit that decided it."""
    async def decide_and_count(request: LimitRequest) -> LimitDecision:
        decision = await decide(request)
        outcome = "unavailable" if decision.unchecked else "allowed" if decision.allowed else "denied"
        DECISIONS.labels(TIER(decision.tier), outcome, decision.limited_by or "none").inc()
        return decision
    return decide_and_count


class LimiterService:
    """The service's resources, opened at start-up and closed at shutdown in reverse order."""

    def __init__(self, settings: LimiterSettings) -> None:
        self.settings = settings
        self.broker = make_broker(settings, SERVICE, reconnected_cb=self.reconnected)
        self.redis = redis_client(settings.redis_url, settings.redis_cluster, settings.limiter_redis_timeout_s,
                                  max_connections=DECISION_WORKERS * 2)
        self.pool: asyncpg.Pool | None = None
        self.use_case: Limiter | None = None
        self.reload = Coalesced(self.reload_limits, "limits reload")
        self.consumers: list[BatchConsumer | RequestResponder] = []
        self.tasks: list[asyncio.Task[None]] = []

    async def connect(self) -> None:
        await self.broker.connect()
        await bind_streams(jetstream(self.broker), streams_bound_by(SERVICE))
        self.pool = await asyncpg.create_pool(self.settings.database_url, min_size=0, max_size=4)
        await ready(self.redis)
        self.use_case = self.limiter(self.pool)
        try:
            await retrying(self.use_case.reload, (LimitsUnavailable, StorageUnavailable), 0.2, 2.0, LIMITS_PATIENCE_S)
        except (LimitsUnavailable, StorageUnavailable) as exc:
            log.warning("could not read the limits (%s); answering in LIMITER_FAILURE_MODE until they are read", exc)

    def limiter(self, pool: asyncpg.Pool) -> Limiter:
        config = self.settings.file_config()
        policy = LimitPolicy(config.tiers, config.price_catalog(), config.models, self.settings.default_max_tokens,
                             self.settings.reservation_cap_tokens)
        return Limiter(policy, RedisLimiterStore(self.redis, self.settings.reservation_ttl_s),
                       self.settings.limiter_failure_mode, JetStreamViolationPublisher(jetstream(self.broker)),
                       PgLimitsSource(pool))

    async def reload_limits(self) -> None:
        assert self.use_case is not None
        await self.use_case.reload()

    async def keep_limits_fresh(self) -> None:
        """Read the limits every LIMITS_RELOAD_S, or every LIMITS_RETRY_S while they were never read."""
        assert self.use_case is not None
        while True:
            await asyncio.sleep(LIMITS_RELOAD_S if self.use_case.limits_loaded else LIMITS_RETRY_S)
            try:
                await self.use_case.reload()
            except (LimitsUnavailable, StorageUnavailable) as exc:
                log.warning("could not read the limits (%s); trying again", exc)

    async def reconnected(self) -> None:
        if self.use_case is not None:
            self.reload.ask()

    async def limits_changed(self, msg: object) -> None:
        self.reload.ask()

    async def start(self) -> None:
        assert self.pool is not None and self.use_case is not None
        js, limiter = jetstream(self.broker), self.use_case
        await nats_client(self.broker).subscribe(LIMITS_CHANGED, cb=self.limits_changed)
        self.tasks = [asyncio.create_task(self.keep_limits_fresh())]
        self.consumers = [
            RequestResponder(nats_client(self.broker), js, subject=LLM_REQUEST, queue=LIMITER_QUEUE,
                             model=LimitRequest, handle=counted(limiter.decide), service=SERVICE,
                             max_in_flight=DECISION_WORKERS),
            BatchConsumer(js, subject=LLM_COMPLETED, durable="limiter-settlement",
                          model=LlmCompleted, store=limiter.settle, service=SERVICE, linger_s=BACKGROUND_LINGER_S),
            BatchConsumer(js, subject=LIMIT_VIOLATION, durable="limiter-violations",
                          model=LimitViolation, store=PgViolationLog(self.pool).store, service=SERVICE,
                          linger_s=BACKGROUND_LINGER_S),
        ]
        for consumer in self.consumers:
            await consumer.start()

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        self.reload.cancel()
        for consumer in self.consumers:
            await consumer.stop()

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()
        await self.redis.aclose()

    async def redis_ready(self) -> None:
        await self.redis.ping()


def create_app(settings: LimiterSettings | None = None) -> AsgiFastStream:
    settings = settings or LimiterSettings()
    configure_logging(SERVICE, settings.log_level, settings.log_format)
    service = LimiterService(settings)
    return lifecycle_app(service, SERVICE, readiness=[("redis", service.redis_ready)])
