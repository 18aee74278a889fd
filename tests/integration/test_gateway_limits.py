"""Tier limits, the 429 body and headers, per-IP limits and the strict policy, through the real gateway."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime

import httpx
import pytest

from tests.conftest import unique, unique_ip
from tests.integration.helpers import auth, chat_body, from_ip, new_key

pytestmark = pytest.mark.service

TIER_LIMITS = {"free": 10, "pro": 100, "enterprise": 1000}


async def fire(client: httpx.AsyncClient, n: int, headers: dict, path: str = "/v1/chat/completions",
               body: dict | None = None, concurrency: int = 20) -> list[httpx.Response]:
    semaphore = asyncio.Semaphore(concurrency)

    async def one() -> httpx.Response:
        async with semaphore:
            return await client.post(path, json=body or chat_body(), headers=headers)

    return await asyncio.gather(*(one() for _ in range(n)))


@pytest.mark.parametrize("tier", sorted(TIER_LIMITS))
async def test_each_tier_gets_exactly_its_hourly_limit(gateway, database_url, tier):
    key = await new_key(database_url, unique(tier), tier)
    limit = TIER_LIMITS[tier]
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        responses = await fire(client, limit + 3, auth(key))
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == limit
    assert statuses.count(429) == 3
    denied = next(r for r in responses if r.status_code == 429)
    assert denied.json()["message"] == f"{tier.capitalize()} tier limit: {limit} LLM requests per hour. Upgrade for more."


async def test_429_body_and_headers_match_the_original_and_ietf_draft(gateway, database_url):
    key = await new_key(database_url, unique("free"), "free")
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        allowed = [await client.post("/v1/chat/completions", json=chat_body(), headers=auth(key)) for _ in range(10)]
        denied = await client.post("/v1/chat/completions", json=chat_body(), headers=auth(key))

    assert allowed[0].headers["RateLimit-Policy"] == '"free";q=10;w=3600'
    assert allowed[0].headers["RateLimit"].startswith('"free";r=9;t=')
    assert allowed[-1].headers["RateLimit"].startswith('"free";r=0;t=')

    assert denied.status_code == 429
    body = denied.json()
    assert list(body) == ["error", "message", "tier", "limit", "windowMs", "retryAfter", "upgradeUrl"]
    assert body["error"] == "Rate limit exceeded"
    assert body["message"] == "Free tier limit: 10 LLM requests per hour. Upgrade for more."
    assert (body["tier"], body["limit"], body["windowMs"], body["upgradeUrl"]) == ("free", 10, 3_600_000, "/pricing")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", body["retryAfter"])
    retry_at = datetime.strptime(body["retryAfter"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    seconds_left = (retry_at - datetime.now(UTC)).total_seconds()
    assert 3500 < seconds_left <= 3601
    retry_after = int(denied.headers["Retry-After"])
    assert 3500 < retry_after <= 3601
    assert denied.headers["RateLimit-Policy"] == '"free";q=10;w=3600'
    match = re.fullmatch(r'"free";r=0;t=(\d+)', denied.headers["RateLimit"])
    assert match and abs(int(match.group(1)) - retry_after) <= 1


async def test_anonymous_callers_are_limited_per_ip(gateway):
    ip_a, ip_b = unique_ip(), unique_ip()
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        a = await fire(client, 5, from_ip(ip_a), path="/api/agent/query", body={"query": "test"}, concurrency=1)
        b = await fire(client, 4, from_ip(ip_b), path="/api/agent/query", body={"query": "test"}, concurrency=1)
    assert [r.status_code for r in a] == [200, 200, 200, 429, 429]
    assert [r.status_code for r in b] == [200, 200, 200, 429]
    assert a[0].json()["response"]
    assert a[3].json()["tier"] == "anonymous"
    assert a[3].json()["message"] == "Anonymous tier limit: 3 LLM requests per hour. Upgrade for more."


async def test_forwarded_for_from_an_untrusted_peer_is_ignored(base_env, limiter):
    from tests.conftest import start_service

    api = start_service("api", {**base_env, "TRUSTED_PROXIES": ""}, "API_PORT")
    try:
        async with httpx.AsyncClient(base_url=api.url, timeout=30) as client:
            # Each request claims a new address, but the peer (127.0.0.1) is not a trusted proxy.
            statuses = [(await client.post("/api/agent/query", json={"query": "x"},
                                           headers=from_ip(unique_ip()))).status_code for _ in range(4)]
    finally:
        api.stop()
    assert statuses.count(429) >= 1


async def test_strict_policy_limits_long_form_generation(gateway, database_url):
    key = await new_key(database_url, unique("free"), "free")
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        long_form = [await client.post("/api/agent/generate-long-form", json={"prompt": "essay", "max_tokens": 50},
                                       headers=auth(key)) for _ in range(3)]
        ordinary = await client.post("/api/agent/query", json={"query": "short"}, headers=auth(key))
    assert [r.status_code for r in long_form] == [200, 200, 429]
    body = long_form[2].json()
    assert body["message"] == "Free tier limit: 2 long-form LLM requests per hour. Upgrade for more."
    assert body["limit"] == 2
    assert long_form[2].headers["RateLimit-Policy"] == '"free-strict";q=2;w=3600'
    assert ordinary.status_code == 200
    # long-form requests count against the ordinary hourly limit too: 2 + 1 of 10 used
    assert ordinary.headers["RateLimit"].startswith('"free";r=7;')


async def test_denials_are_stored_in_rate_limit_violations(gateway, db):
    ip = unique_ip()
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        await fire(client, 6, from_ip(ip), path="/api/agent/query", body={"query": "q"}, concurrency=1)
    for _ in range(100):
        rows = await db.fetch("SELECT * FROM rate_limit_violations WHERE ip_address = $1", ip)
        if len(rows) == 3:
            break
        await asyncio.sleep(0.1)
    assert len(rows) == 3
    assert {(r["tier"], r["endpoint"], r["limited_by"], r["limit_value"], r["window_ms"]) for r in rows} == {
        ("anonymous", "/api/agent/query", "requests", 3, 3_600_000)}
