"""The checks themselves: each one asks a dependency something cheap (the monitor runs it under its
own timeout), and tells a failure as CheckFailed, without secrets."""

from __future__ import annotations

import asyncpg
import httpx
from nats.aio.client import Client as Nats
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from services.health.monitor import CheckFailed, Probe, SkippedCheck
from shared.policy import ANTHROPIC_VERSION, AZURE_API_VERSION
from shared.settings import ReachableProvider, is_set


async def _get(http: httpx.AsyncClient, url: str, headers: dict[str, str] | None = None) -> httpx.Response:
    """GET, with httpx's errors told as the health documents show them (never the URL or a key)."""
    try:
        response = await http.get(url, headers=headers)
    except httpx.HTTPError as exc:
        raise CheckFailed(type(exc).__name__) from exc
    return response


def postgres_probe(database_url: str) -> Probe:
    async def probe() -> str:
        conn = await asyncpg.connect(database_url, timeout=5)
        try:
            await conn.fetchval("SELECT 1")
        finally:
            await conn.close()
        return "Database responding normally"

    return probe


def redis_probe(redis: Redis | RedisCluster) -> Probe:
    async def probe() -> str:
        await redis.ping()
        return "Redis responding normally"

    return probe


def nats_probe(nc: Nats) -> Probe:
    async def probe() -> str:
        if not nc.is_connected:
            raise ConnectionError("not connected")
        rtt = await nc.rtt()
        await nc.jetstream().account_info()
        return f"NATS round trip {rtt * 1000:.1f} ms, JetStream reachable"

    return probe


def models_request(provider: ReachableProvider) -> tuple[str, dict[str, str]]:
    """The URL and headers that list a provider's models, the cheapest call each kind of API answers with
    the key checked: OpenAI's GET /models (a bearer key), Azure OpenAI's GET /openai/models?api-version=
    (`api-key`), Anthropic's GET /v1/models (`x-api-key`, `anthropic-version`)."""
    config = provider.config
    base = config.base_url.rstrip("/")
    key = provider.key.get_secret_value() if is_set(provider.key) else None
    if config.kind == "azure":
        return (f"{base}/openai/models?api-version={config.api_version or AZURE_API_VERSION}",
                {"api-key": key} if key else {})
    if config.kind == "anthropic":
        return f"{base}/v1/models", {"anthropic-version": ANTHROPIC_VERSION, **({"x-api-key": key} if key else {})}
    return f"{base}/models", {"Authorization": f"Bearer {key}"} if key else {}


def provider_probe(http: httpx.AsyncClient, provider: ReachableProvider, healthy_message: str) -> Probe:
    async def probe() -> str:
        if not provider.usable:
            raise SkippedCheck(f"not checked: no {provider.key_env} configured")
        url, headers = models_request(provider)
        response = await _get(http, url, headers=headers)
        if response.is_error:
            raise CheckFailed(f"HTTP {response.status_code}")
        return healthy_message

    return probe


def http_probe(http: httpx.AsyncClient, url: str, expect_status: int) -> Probe:
    async def probe() -> str:
        response = await _get(http, url)
        if response.status_code != expect_status:
            raise ConnectionError(f"HTTP {response.status_code}, expected {expect_status}")
        return "responding normally"

    return probe
