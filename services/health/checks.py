"""The checks themselves: each one asks a dependency something cheap (the monitor runs it under its
own timeout), and tells a failure as CheckFailed, without secrets."""

from __future__ import annotations

import asyncpg
import httpx
from nats.aio.client import Client as Nats
from pydantic import SecretStr
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from services.health.monitor import CheckFailed, Probe, SkippedCheck
from shared.settings import is_set


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


def provider_probe(http: httpx.AsyncClient, label: str, base_url: str, key: SecretStr | None, env_name: str,
                   healthy_message: str) -> Probe:
    async def probe() -> str:
        if not is_set(key):
            raise SkippedCheck(f"not checked: no {env_name} configured")
        response = await _get(http, f"{base_url.rstrip('/')}/models",
                              headers={"Authorization": f"Bearer {key.get_secret_value()}"})
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
