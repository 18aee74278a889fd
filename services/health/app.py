"""The health service (port 3001): polls every dependency in the background and serves the cached
results, in the original JSON or as IETF health+json; publishes transitions and outage alerts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import nats
from fastapi import FastAPI
from nats.aio.client import Client as Nats
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from services.health.checks import http_probe, nats_probe, postgres_probe, provider_probe, redis_probe
from services.health.jetstream_backlog import export_jetstream_backlog
from services.health.monitor import HealthMonitor, Probe
from services.health.nats_announcer import NatsAnnouncer
from services.health.routes import SERVICE, VERSION, HealthState, readiness, router
from services.health.settings import HealthConfig, HealthSettings
from services.health.status import HealthBoard
from shared.bus import nats_options
from shared.logs import configure_logging
from shared.migrations import pending_migrations
from shared.periodic import every
from shared.probes import probes_router
from shared.redis_client import redis_client
from shared.subjects import bind_streams, streams_bound_by

HEALTHY_MESSAGES = {"togetherAI": "Together.ai API responding normally", "openAI": "OpenAI API available as fallback"}
KIND_LABELS = {"openai": "OpenAI-compatible API", "azure": "Azure OpenAI API", "anthropic": "Anthropic API"}


def probes_of(settings: HealthSettings, config: HealthConfig, nc: Nats, redis: Redis | RedisCluster,
              http: httpx.AsyncClient
              ) -> dict[str, tuple[Probe, float]]:
    timeout = settings.health_check_timeout_s
    probes: dict[str, tuple[Probe, float]] = {
        "database": (postgres_probe(settings.database_url), timeout),
        "redis": (redis_probe(redis), timeout),
        "nats": (nats_probe(nc), timeout),
    }
    for name, provider in settings.watched_providers(config).items():
        message = HEALTHY_MESSAGES.get(name) or f"{KIND_LABELS[provider.config.kind]} responding normally"
        probes[name] = (provider_probe(http, provider, message), timeout)
    for check in config.health_checks:
        probes[check.name] = (http_probe(http, check.url, check.expect_status), check.timeout_s or timeout)
    return probes


@asynccontextmanager
async def monitoring(settings: HealthSettings, config: HealthConfig, state: HealthState) -> AsyncIterator[None]:
    """Connections to what is checked, and the polling task, for the app's lifetime."""
    nc = await nats.connect(**nats_options(settings, SERVICE))
    await bind_streams(nc.jetstream(), streams_bound_by(SERVICE))
    redis = redis_client(settings.redis_url, settings.redis_cluster, settings.health_check_timeout_s, 8)
    http = httpx.AsyncClient(timeout=httpx.Timeout(settings.health_check_timeout_s))

    async def migrations_pending() -> bool:
        return bool(await pending_migrations(settings.database_url))

    state.monitor = HealthMonitor(state.board, probes_of(settings, config, nc, redis, http),
                                  NatsAnnouncer(nc), migrations_pending)
    tasks = [asyncio.create_task(state.monitor.run(settings.health_interval_s)),
             asyncio.create_task(every(settings.health_interval_s, lambda: export_jetstream_backlog(nc.jetstream()),
                                       "JetStream backlog"))]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await http.aclose()
        await redis.aclose()
        await nc.close()


def create_app(settings: HealthSettings | None = None) -> FastAPI:
    settings = settings or HealthSettings()
    configure_logging(SERVICE, settings.log_level, settings.log_format)
    config = settings.file_config()
    board = HealthBoard(failure_threshold=settings.health_failure_threshold,
                        providers=tuple(settings.watched_providers(config)))
    state = HealthState(board, time.monotonic())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.health = state
        async with monitoring(settings, config, state):
            yield

    app = FastAPI(title="costwarden health", version=VERSION, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.include_router(router)
    app.include_router(probes_router(SERVICE, lambda: readiness(state)))
    return app
