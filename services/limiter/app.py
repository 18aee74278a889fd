"""Composition root of the limiter: settings, Redis, Postgres and the bus wired to the use case."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import asyncpg
from faststream.asgi import AsgiFastStream
from faststream.nats import NatsBroker
from prometheus_client import Counter

from services.limiter.jetstream_violation_publisher import JetStreamViolationPublisher
from services.limiter.limiter import Limiter
from services.limiter.pg_violation_log import PgViolationLog
from services.limiter.policy import LimitPolicy
from services.limiter.redis_limiter_store import RedisLimiterStore
from services.limiter.settings import LimiterSettings
from shared.batch_consumer import BatchConsumer
from shared.bus import jetstream, make_broker, nats_client
from shared.events import LimitDecision, LimitRequest, LimitViolation, LlmCompleted
from shared.logs import configure_logging
from shared.metric_labels import BoundedLabel
from shared.redis_client import ready, redis_client
from shared.request_responder import RequestResponder
from shared.service_app import lifecycle_app
from shared.subjects import LIMIT_VIOLATION, LIMITER_QUEUE, LLM_COMPLETED, LLM_REQUEST, bind_streams, streams_bound_by

SERVICE = "limiter"
DECISION_WORKERS = 64
# Settlements and violation records wait this long to fill a batch: fewer, larger round trips that
# take less time away from decisions on the same event loop.
BACKGROUND_LINGER_S = 0.2
DECISIONS = Counter("costwarden_limiter_decisions_total", "Limiter decisions by tier, outcome and reason",
                    ["tier", "outcome", "reason"])
TIER = BoundedLabel(20)


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

    def __init__(self, settings: LimiterSettings, broker: NatsBroker) -> None:
        self.settings = settings
        self.broker = broker
        self.redis = redis_client(settings.redis_url, settings.redis_cluster, settings.limiter_redis_timeout_s,
                                  max_connections=DECISION_WORKERS * 2)
        self.pool: asyncpg.Pool | None = None
        self.consumers: list[BatchConsumer | RequestResponder] = []

    async def connect(self) -> None:
        await self.broker.connect()
        await bind_streams(jetstream(self.broker), streams_bound_by(SERVICE))
        self.pool = await asyncpg.create_pool(self.settings.database_url, min_size=0, max_size=4)
        await ready(self.redis)

    def limiter(self) -> Limiter:
        config = self.settings.file_config()
        policy = LimitPolicy(config.tiers, config.price_catalog(), config.models, self.settings.default_max_tokens,
                             self.settings.reservation_cap_tokens)
        return Limiter(policy, RedisLimiterStore(self.redis, self.settings.reservation_ttl_s),
                       self.settings.limiter_failure_mode, JetStreamViolationPublisher(jetstream(self.broker)))

    async def start(self) -> None:
        assert self.pool is not None
        js, limiter = jetstream(self.broker), self.limiter()
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
    service = LimiterService(settings, make_broker(settings, SERVICE))
    return lifecycle_app(service, SERVICE, readiness=[("redis", service.redis_ready)])
