"""The response cache's entries in Redis, single and clustered: an entry reads back until its TTL, a
store that is down is answered at once as unavailable (never an error to the caller); and the limiter's
script counts a cache hit in the request windows without reserving anything."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from services.api.callers import Caller
from services.api.redis_response_cache import RedisResponseCache
from services.api.response_cache import CachedAnswer, CacheUnavailable, ModelCachePolicy, ResponseCache
from services.api.usage import Usage
from services.limiter.policy import LimitPolicy
from services.limiter.redis_limiter_store import RedisLimiterStore
from shared.events import LimitRequest
from shared.policy import DEFAULT_MODELS, DEFAULT_TIERS
from shared.pricing import PriceCatalog
from shared.redis_client import redis_client
from tests.conftest import unique
from tests.servers import free_port, redis_cluster

BODY = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
ANSWER = CachedAnswer("openai", "gpt-4o-mini", Usage(9, 4), 0.0, chunks=('{"choices":[]}', '{"usage":{}}'))


async def kept_and_found(client: Redis | RedisCluster) -> None:
    cache = ResponseCache(RedisResponseCache(client, 1.0), {"m": ModelCachePolicy(1, False, 10_000)})
    plans = [cache.plan("chat", "m", Caller(unique("u"), "pro"), BODY, None, None) for _ in range(20)]
    for plan in plans:  # twenty callers: their keys fall in every master's slots
        assert plan is not None
        keeper = cache.keeper(plan, "miss")
        assert keeper is not None
        await keeper(ANSWER)
    for plan in plans:
        found, result = await cache.lookup(plan)  # type: ignore[arg-type]
        assert result == "hit" and found is not None and found.chunks == ANSWER.chunks and found.usage == ANSWER.usage
    await asyncio.sleep(2.1)  # past the entries' TTL of 1 s
    assert [(await cache.lookup(plan))[1] for plan in plans] == ["miss"] * 20  # type: ignore[arg-type]


@pytest.mark.adapter
async def test_entries_live_until_their_ttl_on_redis(redis_url):
    client = Redis.from_url(redis_url)
    try:
        await kept_and_found(client)
    finally:
        await client.aclose()


@pytest.mark.adapter
async def test_entries_live_until_their_ttl_on_redis_cluster():
    nodes, url = redis_cluster()
    client = redis_client(url, cluster=True, timeout_s=1.0)
    try:
        await kept_and_found(client)
    finally:
        await client.aclose()
        for node in nodes:
            node.stop()


@pytest.mark.adapter
async def test_a_redis_that_does_not_answer_is_unavailable_at_once_and_again_after_a_second():
    client = redis_client(f"redis://127.0.0.1:{free_port()}/0", cluster=False, timeout_s=0.25)
    store = RedisResponseCache(client, 0.25)
    try:
        for _ in range(2):
            started = time.monotonic()
            with pytest.raises(CacheUnavailable):
                await store.get("cwapi:cache:x")
            assert time.monotonic() - started < 1.0
        with pytest.raises(CacheUnavailable):
            await store.put("cwapi:cache:x", b"v", 10)
    finally:
        await client.aclose()


@pytest.mark.adapter
async def test_the_limiters_script_counts_a_hit_as_a_request_and_reserves_nothing(redis_url):
    client = Redis.from_url(redis_url)
    policy = LimitPolicy(DEFAULT_TIERS, PriceCatalog.with_overrides({}), DEFAULT_MODELS, 256, 5000)
    store = RedisLimiterStore(client, 60)
    user = unique("hit")
    try:
        def request(hit: bool) -> LimitRequest:
            return LimitRequest(request_id=unique("r"), user_id=user, tier="free", model="gpt-4o-mini",
                                prompt_tokens_estimate=100, max_tokens=50, cache_hit=hit)

        readings = []
        for hit in [False] + [True] * 10:
            asked = request(hit)
            plan = policy.plan(asked)
            readings.append(policy.decision(asked, plan, await store.check_and_reserve(plan)))
            if hit and len(readings) == 2:  # the same hit asked again is counted once
                assert (await store.check_and_reserve(plan)).allowed
        assert [r.allowed for r in readings] == [True] * 10 + [False] and readings[-1].limited_by == "requests"
        assert [(r.reserved_tokens, r.reserved_usd) for r in readings[1:]] == [(0, 0)] * 10
        base = "cw:{user:" + user + "}"
        assert await client.zcard(f"{base}:req") == 10
        assert sum(int(v) for v in (await client.hgetall(f"{base}:tok")).values()) == 150  # the miss's alone
        assert len(await client.keys(f"{base}:resv:*")) == 1
    finally:
        await client.aclose()
