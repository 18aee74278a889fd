"""One way to reach Redis, single or clustered (REDIS_CLUSTER=true: REDIS_URL is any node of the
cluster, and the client follows its slots, MOVED and ASK redirections and failovers)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

# What redis-py itself sends, besides a service's own commands: the cluster client learns the slots and
# the commands' key positions. (Its CLIENT SETINFO on connect may be refused: redis-py ignores that,
# and Redis 7.0 does not know the command.)
CLIENT_COMMANDS = ("cluster|slots", "cluster|shards", "command")


def acl_user(name: str, password_sha256: str, commands: list[str], key_pattern: str | None) -> str:
    """One line of a Redis ACL file: the user on, its password's SHA-256 only, its keys (none if
    `key_pattern` is None), no Pub/Sub channels, and only these commands."""
    keys = f"~{key_pattern}" if key_pattern else "resetkeys"
    return f"user {name} on #{password_sha256} {keys} resetchannels -@all " + " ".join(f"+{c}" for c in commands)


async def ready(client: Redis | RedisCluster) -> None:
    """Learn a cluster's slots before the first request: redis-py's asyncio cluster client otherwise
    does it lazily, and a burst of first commands racing to do it fails some of them."""
    if isinstance(client, RedisCluster):
        try:
            await client.initialize()
        except (RedisError, OSError) as exc:  # unreachable now: the limiter answers in its failure mode
            log.warning("Redis Cluster not reachable at start (%s); its slots will be learnt later",
                        type(exc).__name__)


# A command on a cluster is tried at most this many more times, each after learning the slots again:
# enough to follow a failover's redirections, few enough that a master that died is answered for in
# a few timeouts rather than after redis-py's default ten retries (seconds the callers wait).
CLUSTER_RETRIES = 2


def redis_client(url: str, cluster: bool, timeout_s: float, max_connections: int = 64) -> Redis | RedisCluster:
    if cluster:
        retry = Retry(ExponentialWithJitterBackoff(base=0.01, cap=timeout_s), retries=CLUSTER_RETRIES)
        return RedisCluster.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                     max_connections=max_connections, retry=retry)
    return Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                          max_connections=max_connections)


class PausedAfterFailure:
    """Redis asked through a pause: after it failed to answer, it is not asked again for `pause_s`, so
    that while it is down every caller hears so at once (`unavailable`) rather than each waiting out a
    timeout. Said once in the log when it starts (`away`) and once when it ends (`back`)."""

    def __init__(self, unavailable: type[Exception], away: str, back: str, pause_s: float,
                 timeout_s: float | None = None) -> None:
        self.unavailable, self.away, self.back = unavailable, away, back
        self.pause_s = pause_s
        self.timeout_s = timeout_s
        self._retry_at = 0.0
        self._failing = False

    async def ask(self, command: Callable[[], Awaitable[Any]]) -> Any:
        if self._failing and time.monotonic() < self._retry_at:
            raise self.unavailable("Redis unreachable")
        try:
            async with asyncio.timeout(self.timeout_s):
                answer = await command()
        except (RedisError, OSError, AttributeError, TimeoutError) as exc:
            # AttributeError: redis-py's asyncio cluster client can fail that way when a timeout made it
            # reset its connections (services/limiter/redis_limiter_store.py says more).
            if not self._failing:
                log.warning("Redis unreachable (%s): %s", type(exc).__name__, self.away)
            self._failing, self._retry_at = True, time.monotonic() + self.pause_s
            raise self.unavailable(type(exc).__name__) from exc
        if self._failing:
            self._failing = False
            log.warning("Redis answers again: %s", self.back)
        return answer
