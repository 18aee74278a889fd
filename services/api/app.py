"""Composition root of the api gateway (FastAPI): settings, NATS, Postgres, providers and the token
counter wired to the gateway use case and the routes (routers/), in the app's lifespan.

OpenAI-compatible /v1/chat/completions and /v1/models, the original /api/agent/* endpoints, the cost
endpoints, and the service's own /health/live, /health/ready and /metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import asyncpg
import nats
import nats.errors
from fastapi import FastAPI
from prometheus_client import Gauge, Histogram

from services.api.aiohttp_provider_client import AiohttpProviderClient
from services.api.api_state import ApiState
from services.api.breaker import BreakerState, CircuitBreaker
from services.api.callers import parse_networks
from services.api.gateway import Gateway
from services.api.http_edge import install_error_handlers
from services.api.jetstream_completion_publisher import JetStreamCompletionPublisher
from services.api.nats_cost_queries import NatsCostQueries
from services.api.nats_limiter_client import NatsLimiterClient
from services.api.pg_api_key_store import PgApiKeyStore
from services.api.pg_key_admin import PgKeyAdmin
from services.api.providers import ProviderClient, ProviderRouter
from services.api.routers import admin, agent, chat, costs, ops
from services.api.tiktoken_token_counter import TiktokenTokenCounter
from shared.bus import nats_options
from shared.bus_permissions import streams_of
from shared.logs import configure_logging
from shared.service_app import RequestMetrics, settle_heap
from shared.settings import Settings, get_settings, is_set
from shared.subjects import bind_streams

SERVICE = "api"
# What the routes use, opened at start and closed at shutdown: the real servers by default
# (api_resources); a test may give any ApiState instead, to serve the routes in process.
ResourcesFactory = Callable[[Settings], AbstractAsyncContextManager[ApiState]]


def provider_clients(settings: Settings) -> dict[str, ProviderClient]:
    """One client per provider that has a key: a provider without one is not tried."""
    clients: dict[str, ProviderClient] = {}
    for name, base_url, key in (("together_ai", settings.together_base_url, settings.together_api_key),
                                ("openai", settings.openai_base_url, settings.openai_api_key)):
        if is_set(key):
            clients[name] = AiohttpProviderClient(name, base_url, key, settings.provider_timeout_s,
                                                  settings.provider_connect_timeout_s)
    return clients


REQUEST_SECONDS = Histogram("costwarden_api_request_seconds", "Gateway request latency", ["route", "status"])
BREAKER_OPEN = Gauge("costwarden_api_provider_breaker_open",
                     "1 while a provider's circuit breaker is open or half-open (skipping calls)", ["provider"],
                     multiprocess_mode="livemax")


def breaker_gauge(provider: str) -> Callable[[BreakerState], None]:
    BREAKER_OPEN.labels(provider).set(0)
    return lambda state: BREAKER_OPEN.labels(provider).set(state is not BreakerState.CLOSED)


@asynccontextmanager
async def api_resources(settings: Settings) -> AsyncIterator[ApiState]:
    """Everything the routes use, opened in order and closed in reverse; the gateway drains first."""
    config = settings.file_config()
    nc = await nats.connect(**nats_options(settings, "api"))
    js = nc.jetstream()
    await bind_streams(js, streams_of("api"))
    pool = await asyncpg.create_pool(settings.database_url, min_size=0, max_size=8)
    clients = provider_clients(settings)
    breakers = {name: CircuitBreaker(settings.breaker_failure_threshold, settings.breaker_cooldown_s,
                                     on_change=breaker_gauge(name))
                for name in clients}
    gateway = Gateway(
        NatsLimiterClient(nc, settings.limiter_request_timeout_s, settings.limiter_failure_mode),
        ProviderRouter(clients, breakers, settings.provider_max_retries),
        JetStreamCompletionPublisher(nc, js),
        config.models,
        await asyncio.to_thread(TiktokenTokenCounter.cl100k),
    )

    async def nats_connected() -> None:
        if not nc.is_connected:
            raise ConnectionError("NATS disconnected")

    async def postgres() -> None:
        await pool.fetchval("SELECT 1")

    try:
        yield ApiState(settings=settings, config=config, trusted_proxies=parse_networks(settings.trusted_proxies),
                       gateway=gateway, keys=PgApiKeyStore(pool, settings.api_key_cache_s), key_admin=PgKeyAdmin(pool),
                       cost_queries=NatsCostQueries(nc, settings.cost_query_timeout_s), breakers=breakers,
                       readiness=[("nats", nats_connected), ("postgres", postgres)])
    finally:
        await gateway.drain()
        try:
            await nc.drain()
        except nats.errors.Error:  # NATS is away; nats-py may then fail to flush to the dead socket
            with contextlib.suppress(RuntimeError):
                await nc.close()
        await pool.close()


def create_app(settings: Settings | None = None, resources: ResourcesFactory = api_resources) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(SERVICE, settings.log_level, settings.log_format)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with resources(settings) as state:
            app.state.api = state
            settle_heap()
            yield

    # No /docs or /redoc: FastAPI's pages load their scripts from a CDN and are blank offline.
    # The OpenAPI document itself stays at /openapi.json.
    app = FastAPI(title="costwarden api", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None)
    install_error_handlers(app)
    app.add_middleware(RequestMetrics, histogram=REQUEST_SECONDS)
    for router in (chat.router, agent.router, costs.router, admin.router, ops.router):
        app.include_router(router)
    return app
