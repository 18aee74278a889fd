"""The response cache's entries in Redis (services/api/response_cache.py says what they are): one string
key per entry, `cwapi:cache:<sha256>`, written with SET EX and read with GET, single-key commands that
work the same on Redis Cluster and under the api's ACL (`cwapi:*`). Every call is bounded by
API_REDIS_TIMEOUT_S; after a failure Redis is not asked again for a second, so that while it is down
every call is a bypass at once rather than after a timeout."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from services.api.response_cache import CacheUnavailable

COMMANDS = ("get", "set")
RETRY_AFTER_FAILURE_S = 1.0

log = logging.getLogger(__name__)


class RedisResponseCache:
    def __init__(self, redis: Redis | RedisCluster, timeout_s: float,
                 retry_after_failure_s: float = RETRY_AFTER_FAILURE_S) -> None:
        self.redis = redis
        self.timeout_s = timeout_s
        self.retry_after_failure_s = retry_after_failure_s
        self._retry_at = 0.0
        self._failing = False

    async def get(self, key: str) -> bytes | None:
        answer = await self._ask(lambda: self.redis.get(key))
        return answer if isinstance(answer, bytes) or answer is None else str(answer).encode()

    async def put(self, key: str, value: bytes, ttl_s: int) -> None:
        await self._ask(lambda: self.redis.set(key, value, ex=ttl_s))

    async def _ask(self, command: Callable[[], Awaitable[Any]]) -> Any:
        if self._failing and time.monotonic() < self._retry_at:
            raise CacheUnavailable("Redis unreachable")
        try:
            async with asyncio.timeout(self.timeout_s):
                answer = await command()
        except (RedisError, OSError, AttributeError, TimeoutError) as exc:
            # AttributeError: redis-py's asyncio cluster client can fail that way when a timeout made it
            # reset its connections (services/limiter/redis_limiter_store.py says more).
            if not self._failing:
                log.warning("Redis unreachable (%s): the response cache is bypassed until it answers",
                            type(exc).__name__)
            self._failing, self._retry_at = True, time.monotonic() + self.retry_after_failure_s
            raise CacheUnavailable(type(exc).__name__) from exc
        if self._failing:
            self._failing = False
            log.warning("Redis answers again: the response cache is used")
        return answer
