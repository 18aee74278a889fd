"""Redis with `costwarden redis-acl`'s users: the limiter decides and settles exactly as the `limiter`
user and can touch nothing outside `cw:*`; the api counts its deployments' ceilings and keeps its
cached answers as `api` and can touch nothing outside `cwapi:*`; the health check works as `health` and can read no key; the default
user is off."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import nats
import pytest
from redis.asyncio import Redis
from redis.exceptions import AuthenticationError, NoPermissionError

from services.api.redis_response_cache import RedisResponseCache
from services.api.redis_route_ceilings import RedisRouteCeilings
from services.limiter.policy import subject_key
from shared.events import LimitDecision, LimitRequest, LlmCompleted
from tests.conftest import start_service, unique
from tests.servers import ProcessServer, free_port, nats_server
from tests.support.polling import eventually

pytestmark = pytest.mark.service


@pytest.fixture(scope="module")
def acl_redis():
    """A redis-server started with the generated ACL file; {user: REDIS_URL}, and the server."""
    port = free_port()
    made = subprocess.run([sys.executable, "-m", "services.cli", "redis-acl"], capture_output=True, text=True,
                          env={**os.environ, "REDIS_URL": f"redis://127.0.0.1:{port}/0"}, check=True)
    acl = Path(tempfile.mkdtemp(prefix="redis-acl-")) / "users.acl"
    acl.write_text(made.stdout)
    assert "#" in made.stdout and not re.search(r">\S", made.stdout)  # hashes only, no password in the file
    urls = dict(re.findall(r"^(\w+): REDIS_URL=(\S+)$", made.stderr, re.M))
    server = ProcessServer("redis-acl", ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                         "--appendonly", "no", "--aclfile", str(acl)], port)
    server.start()
    yield urls, port
    server.stop()


async def test_the_limiter_works_as_its_user_and_reaches_only_its_keys(acl_redis, base_env):
    urls, port = acl_redis
    bus, bus_url = nats_server()
    limiter = start_service("limiter", {**base_env, "NATS_URL": bus_url, "REDIS_URL": urls["limiter"]}, "LIMITER_PORT")
    nc = await nats.connect(bus_url)
    as_limiter = Redis.from_url(urls["limiter"])
    try:
        user = unique("acl")
        requests = [LimitRequest(request_id=unique("req"), user_id=user, tier="pro", model="gpt-4o-mini",
                                 max_tokens=8) for _ in range(110)]
        replies = await asyncio.gather(*(nc.request("llm.request", r.model_dump_json().encode(), timeout=20)
                                         for r in requests))
        decisions = [LimitDecision.model_validate_json(reply.data) for reply in replies]
        assert sum(d.allowed for d in decisions) == 100 and not [d for d in decisions if d.limited_by == "unavailable"]

        granted = next(r for r, d in zip(requests, decisions, strict=True) if d.allowed)
        reservation = f"{subject_key(user, None)}:resv:{granted.request_id}"
        assert await as_limiter.exists(reservation) == 1
        done = LlmCompleted(request_id=granted.request_id, user_id=user, tier="pro", provider="together_ai",
                            model="gpt-4o-mini", endpoint="/v1/chat/completions", prompt_tokens=3, completion_tokens=2,
                            success=True, latency_ms=4)
        await nc.jetstream().publish("llm.completed", done.model_dump_json().encode(), stream="LLM")

        async def settled() -> bool:
            return await as_limiter.exists(reservation) == 0

        assert await eventually(settled, 20), "the settlement script did not run as the limiter user"
        for forbidden in (as_limiter.set("other:key", 1), as_limiter.get(reservation), as_limiter.flushall(),
                          as_limiter.keys("*"), as_limiter.eval("return redis.call('SET', KEYS[1], 1)", 1, "other:k")):
            with pytest.raises(NoPermissionError):
                await forbidden
        with pytest.raises(AuthenticationError):
            await Redis(port=port).ping()  # the default user is off
    finally:
        await as_limiter.aclose()
        await nc.close()
        limiter.stop()
        bus.stop()


async def test_the_health_check_can_only_ping(acl_redis, base_env):
    urls, _ = acl_redis
    health = start_service("health", {**base_env, "REDIS_URL": urls["health"], "HEALTH_INTERVAL_S": "1"}, "HEALTH_PORT")
    as_health = Redis.from_url(urls["health"])
    try:
        assert await as_health.ping()
        for forbidden in (as_health.exists("cw:{user:a}:req"), as_health.get("x"), as_health.set("x", 1)):
            with pytest.raises(NoPermissionError):
                await forbidden

        def redis_healthy() -> bool:
            return httpx.get(f"{health.url}/health").json()["dependencies"].get("redis", {}).get("status") == "healthy"

        assert await eventually(redis_healthy, 20)
    finally:
        await as_health.aclose()
        health.stop()


async def test_the_api_counts_its_ceilings_and_caches_as_its_user_and_reaches_only_its_keys(acl_redis):
    urls, _ = acl_redis
    as_api = Redis.from_url(urls["api"])
    try:
        ceilings = RedisRouteCeilings(as_api)
        provider = unique("deploy")
        waits = [await ceilings.admit(provider, 2, None, 10) for _ in range(3)]
        assert waits[:2] == [0, 0] and 0 < waits[2] <= 60
        cache = RedisResponseCache(as_api, 2.0)
        await cache.put("cwapi:cache:acl", b"an answer", 60)
        assert await cache.get("cwapi:cache:acl") == b"an answer"
        for forbidden in (as_api.get("cw:{user:a}:req"), as_api.set("cw:{user:a}:req", 1),
                          as_api.eval("return redis.call('HGETALL', KEYS[1])", 1, "cw:{user:a}:tok"),
                          as_api.keys("*"), as_api.flushall()):
            with pytest.raises(NoPermissionError):
                await forbidden
    finally:
        await as_api.aclose()
