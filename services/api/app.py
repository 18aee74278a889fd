"""Composition root of the api gateway (FastAPI): settings, NATS, Postgres, Redis, providers and the
token counter wired to the admission and gateway use cases and the routes (http/), in the app's
lifespan.

OpenAI-compatible /v1/chat/completions, /v1/embeddings and /v1/models, the original /api/agent/* endpoints, the cost
endpoints, the admin API for keys, the bus's AsyncAPI document (/asyncapi.json), and the probes
(/health/live, /health/ready with each provider's breaker, /metrics).

`create_app(settings, resources)` builds the app around any `resources`: an async context manager
that yields the ApiState the routes use (api_resources opens the real ones; a test may give its own).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any

import asyncpg
import nats
import nats.errors
from fastapi import FastAPI
from prometheus_client import Gauge, Histogram

from services.api.admission import Admission
from services.api.aiohttp_provider_client import AiohttpProviderClient
from services.api.breaker import BreakerState, CircuitBreaker
from services.api.cached_key_store import CachedKeyStore
from services.api.callers import parse_networks
from services.api.gateway import Gateway
from services.api.http import admin, agent, asyncapi, chat, costs, embeddings
from services.api.http.errors import install_error_handlers
from services.api.http.state import ApiState
from services.api.jetstream_completion_publisher import JetStreamCompletionPublisher
from services.api.nats_cost_queries import NatsCostQueries
from services.api.nats_limiter_client import NatsLimiterClient
from services.api.nats_limits_announcer import NatsLimitsAnnouncer
from services.api.pg_api_key_store import PgApiKeyStore
from services.api.providers import Deployment, ProviderRouter
from services.api.response_cache import ModelCachePolicy, ResponseCache, cache_policies
from services.api.settings import ApiConfig, ApiSettings
from services.api.tiktoken_token_counter import TiktokenTokenCounter
from services.keys.pg_key_admin import PgKeyAdmin
from services.teams.pg_team_admin import PgTeamAdmin
from services.teams.team_admin import TeamAdmin
from shared.bus import nats_options
from shared.logs import configure_logging
from shared.probes import probes_router, readiness_document
from shared.service_app import RequestMetrics, settle_heap
from shared.subjects import bind_streams, streams_bound_by

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster

    from services.api.redis_route_ceilings import RedisRouteCeilings

SERVICE = "api"

ApiResources = Callable[[ApiSettings], AbstractAsyncContextManager[ApiState]]

REQUEST_SECONDS = Histogram("costwarden_api_request_seconds", "Gateway request latency", ["route", "status"])
BREAKER_OPEN = Gauge("costwarden_api_provider_breaker_open",
                     "1 while a provider's circuit breaker is open or half-open (skipping calls)", ["provider"],
                     multiprocess_mode="livemax")


def deployments(settings: ApiSettings, config: ApiConfig) -> dict[str, Deployment]:
    """Each provider the gateway may call (services/api/settings.py says which) with its client and its
    breaker; a provider without a key is not among them, and never tried."""
    return {name: Deployment(AiohttpProviderClient(endpoint),
                             CircuitBreaker(settings.breaker_failure_threshold, settings.breaker_cooldown_s,
                                            on_change=breaker_gauge(name)),
                             endpoint.max_retries, endpoint.rpm, endpoint.tpm)
            for name, endpoint in settings.provider_endpoints(config).items()}


def breaker_gauge(provider: str) -> Callable[[BreakerState], None]:
    BREAKER_OPEN.labels(provider).set(0)
    return lambda state: BREAKER_OPEN.labels(provider).set(state is not BreakerState.CLOSED)


def redis_adapters(settings: ApiSettings, policies: dict[str, ModelCachePolicy], ceilings_declared: bool
                   ) -> tuple[list[Redis | RedisCluster], ResponseCache | None, RedisRouteCeilings | None]:
    """The api's Redis clients, the response cache and the deployments' ceilings. The api's client
    (REDIS_URL, its own ACL user `api`, keys under `cwapi:`) is asked only for deployments that declare
    rpm/tpm ceilings and models whose answers are cached (unless CACHE_REDIS_URL gives the cache its
    own); its connection is made on first use. With neither, there is no client, and redis-py is not
    even imported (a good part of the api's start)."""
    if not policies and not ceilings_declared:
        return [], None, None
    from services.api.redis_response_cache import RedisResponseCache
    from services.api.redis_route_ceilings import RedisRouteCeilings
    from shared.redis_client import redis_client

    redis = redis_client(settings.redis_url, settings.redis_cluster, settings.api_redis_timeout_s)
    cache_redis = redis_client(settings.cache_redis_url, settings.redis_cluster, settings.api_redis_timeout_s) \
        if settings.cache_redis_url and policies else redis
    cache = ResponseCache(RedisResponseCache(cache_redis, settings.api_redis_timeout_s), policies) if policies else None
    ceilings = RedisRouteCeilings(redis) if ceilings_declared else None
    return [redis] if cache_redis is redis else [redis, cache_redis], cache, ceilings


@asynccontextmanager
async def api_resources(settings: ApiSettings) -> AsyncIterator[ApiState]:
    """Everything the routes use, opened in order and closed in reverse; the gateway drains first."""
    config = settings.file_config()
    nc = await nats.connect(**nats_options(settings, SERVICE))
    js = nc.jetstream()
    await bind_streams(js, streams_bound_by(SERVICE))
    pool = await asyncpg.create_pool(settings.database_url, min_size=0, max_size=8)
    providers = deployments(settings, config)
    redis_clients, cache, ceilings = redis_adapters(settings, cache_policies(config.cache, config.models),
                                                    any(d.has_ceiling for d in providers.values()))
    router = ProviderRouter(providers, ceilings)
    counter = await asyncio.to_thread(TiktokenTokenCounter.cl100k)
    admission = Admission(CachedKeyStore(PgApiKeyStore(pool), settings.api_key_cache_s),
                          NatsLimiterClient(nc, settings.limiter_request_timeout_s, settings.limiter_failure_mode),
                          counter, config.models)
    gateway = Gateway(router, JetStreamCompletionPublisher(nc, js), counter)

    async def nats_connected() -> None:
        if not nc.is_connected:
            raise ConnectionError("NATS disconnected")

    async def postgres() -> None:
        await pool.fetchval("SELECT 1")

    try:
        yield ApiState(settings=settings, config=config, trusted_proxies=parse_networks(settings.trusted_proxies),
                       admission=admission, gateway=gateway, key_admin=PgKeyAdmin(pool),
                       cost_queries=NatsCostQueries(nc, settings.cost_query_timeout_s), breakers=router.breakers,
                       readiness=[("nats", nats_connected), ("postgres", postgres)],
                       teams=TeamAdmin(PgTeamAdmin(pool), NatsLimitsAnnouncer(nc).announce), cache=cache)
    finally:
        await gateway.drain()
        try:
            await nc.drain()
        except nats.errors.Error:  # NATS is away; nats-py may then fail to flush to the dead socket
            with contextlib.suppress(RuntimeError):
                await nc.close()
        await pool.close()
        for redis in redis_clients:
            await redis.aclose()


def create_app(settings: ApiSettings | None = None, resources: ApiResources = api_resources) -> FastAPI:
    settings = settings or ApiSettings()
    configure_logging(SERVICE, settings.log_level, settings.log_format)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with resources(settings) as state:
            app.state.api = state
            settle_heap()
            yield

    async def ready() -> tuple[dict[str, Any], int]:
        state: ApiState = app.state.api
        body, status = await readiness_document(SERVICE, state.readiness)
        body["providers"] = {name: breaker.state.value for name, breaker in state.breakers.items()}
        return body, status

    # No /docs or /redoc: FastAPI's pages load their scripts from a CDN and are blank offline.
    # The OpenAPI document itself stays at /openapi.json.
    app = FastAPI(title="costwarden api", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None)
    install_error_handlers(app)
    app.add_middleware(RequestMetrics, histogram=REQUEST_SECONDS)
    for router in (chat.router, embeddings.router, agent.router, costs.router, admin.router, asyncapi.router,
                   probes_router(SERVICE, ready)):
        app.include_router(router)
    return app
