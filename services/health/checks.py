"""The checks themselves: each one asks a dependency something cheap, under its own timeout."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import asyncpg
import httpx
from nats.aio.client import Client as Nats
from pydantic import SecretStr
from redis.asyncio import Redis

from services.health.status import CheckResult, Status
from shared.settings import is_set

Probe = Callable[[], Awaitable[str]]  # returns the message for a healthy result, raises otherwise
SLOW_FRACTION = 0.8  # answering in more than this share of the timeout counts as degraded


async def run_check(probe: Probe, timeout_s: float) -> CheckResult:
    started = time.perf_counter()
    try:
        message = await asyncio.wait_for(probe(), timeout_s)
    except TimeoutError:
        return CheckResult("unhealthy", None, f"timed out after {timeout_s:g}s", datetime.now(UTC))
    except SkippedCheck as skipped:
        return CheckResult("skipped", None, str(skipped), datetime.now(UTC))
    except Exception as exc:  # a health check reports every failure, whatever its type
        return CheckResult("unhealthy", None, describe(exc), datetime.now(UTC))
    latency_ms = round((time.perf_counter() - started) * 1000)
    status: Status = "degraded" if latency_ms > timeout_s * 1000 * SLOW_FRACTION else "healthy"
    return CheckResult(status, latency_ms, message, datetime.now(UTC))


class SkippedCheck(Exception):
    pass


def describe(exc: BaseException) -> str:
    if isinstance(exc, httpx.HTTPStatusError):
        return f"HTTP {exc.response.status_code}"
    if isinstance(exc, httpx.HTTPError):
        return f"{type(exc).__name__}"
    return f"{type(exc).__name__}: {exc}"[:200]


def postgres_probe(database_url: str) -> Probe:
    async def probe() -> str:
        conn = await asyncpg.connect(database_url, timeout=5)
        try:
            await conn.fetchval("SELECT 1")
        finally:
            await conn.close()
        return "Database responding normally"

    return probe


def redis_probe(redis: Redis) -> Probe:
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
        response = await http.get(f"{base_url.rstrip('/')}/models",
                                  headers={"Authorization": f"Bearer {key.get_secret_value()}"})
        response.raise_for_status()
        return healthy_message

    return probe


def http_probe(http: httpx.AsyncClient, url: str, expect_status: int) -> Probe:
    async def probe() -> str:
        response = await http.get(url)
        if response.status_code != expect_status:
            raise ConnectionError(f"HTTP {response.status_code}, expected {expect_status}")
        return "responding normally"

    return probe
