"""The deployments' rpm/tpm ceilings in a real Redis: two gateway replicas (two clients) share one
count per deployment and minute; a call over the rpm or the tpm is told how long until the next
minute; while Redis is away a ceiling goes unchecked, and Redis is asked again only after a pause."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from services.api.providers import CeilingsUnavailable
from services.api.redis_route_ceilings import RedisRouteCeilings, deployment_key
from tests.conftest import unique
from tests.servers import ProcessServer, free_port

pytestmark = pytest.mark.adapter


async def test_replicas_share_a_deployments_requests_a_minute(redis_url):
    one, two = Redis.from_url(redis_url), Redis.from_url(redis_url)
    try:
        replica_a, replica_b = RedisRouteCeilings(one), RedisRouteCeilings(two)
        provider = unique("deploy")
        waits = [await replica.admit(provider, 3, None, 5) for replica in (replica_a, replica_b, replica_a, replica_b)]
        assert waits[:3] == [0, 0, 0] and 0 < waits[3] <= 60
        assert await replica_a.admit(unique("other"), 3, None, 5) == 0  # each deployment its own count
        assert 60_000 < await one.pttl(deployment_key(provider)) <= 120_000
    finally:
        await one.aclose()
        await two.aclose()


async def test_a_deployments_tokens_a_minute(redis_url):
    client = Redis.from_url(redis_url)
    try:
        ceilings = RedisRouteCeilings(client)
        provider = unique("deploy")
        assert await ceilings.admit(provider, None, 1000, 600) == 0
        assert await ceilings.admit(provider, None, 1000, 400) == 0
        assert await ceilings.admit(provider, None, 1000, 1) > 0  # 1000 used this minute
        big = unique("deploy")
        assert await ceilings.admit(big, None, 1000, 5000) == 0  # alone in its minute, the provider decides
        assert await ceilings.admit(big, None, 1000, 1) > 0
    finally:
        await client.aclose()


async def test_while_redis_is_away_a_ceiling_goes_unchecked_and_redis_is_asked_again_after_a_pause():
    port = free_port()
    client = Redis(port=port, socket_timeout=0.25, socket_connect_timeout=0.25)
    patient, eager = RedisRouteCeilings(client, retry_after_failure_s=600), RedisRouteCeilings(client, 0.2)
    server = ProcessServer("redis-ceilings", ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save",
                                              "", "--appendonly", "no"], port)
    try:
        for ceilings in (patient, eager):
            with pytest.raises(CeilingsUnavailable):
                await ceilings.admit("deploy", 10, None, 5)
        server.start()
        with pytest.raises(CeilingsUnavailable):  # not asked again during its pause, though it is back
            await patient.admit("deploy", 10, None, 5)
        await asyncio.sleep(0.3)
        assert await eager.admit("deploy", 10, None, 5) == 0
    finally:
        await client.aclose()
        server.stop()
