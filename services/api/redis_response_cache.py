"""The response cache's entries in Redis (services/api/response_cache.py says what they are): one string
key per entry, `cwapi:cache:<sha256>`, written with SET EX and read with GET, single-key commands that
work the same on Redis Cluster and under the api's ACL (`cwapi:*`). Every call is bounded by
API_REDIS_TIMEOUT_S; after a failure Redis is not asked again for a second, so that while it is down
every call is a bypass at once rather than after a timeout."""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from services.api.response_cache import CacheUnavailable
from shared.redis_client import PausedAfterFailure

COMMANDS = ("get", "set")
RETRY_AFTER_FAILURE_S = 1.0


class RedisResponseCache:
    def __init__(self, redis: Redis | RedisCluster, timeout_s: float,
                 retry_after_failure_s: float = RETRY_AFTER_FAILURE_S) -> None:
        self.redis = redis
        self.paused = PausedAfterFailure(CacheUnavailable, "the response cache is bypassed until it answers",
                                         "the response cache is used", retry_after_failure_s, timeout_s)

    async def get(self, key: str) -> bytes | None:
        answer = await self.paused.ask(lambda: self.redis.get(key))
        return answer if isinstance(answer, bytes) or answer is None else str(answer).encode()

    async def put(self, key: str, value: bytes, ttl_s: int) -> None:
        await self.paused.ask(lambda: self.redis.set(key, value, ex=ttl_s))
