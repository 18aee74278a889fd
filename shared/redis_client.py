"""One way to reach Redis, single or clustered (REDIS_CLUSTER=true: REDIS_URL is any node of the
cluster, and the client follows its slots, MOVED and ASK redirections and failovers)."""

from __future__ import annotations

import logging

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

log = logging.getLogger(__name__)


async def ready(client: Redis | RedisCluster) -> None:
    """Learn a cluster's slots before the first request: redis-py's asyncio cluster client otherwise
    does it lazily, and a burst of first commands racing to do it fails some of them."""
    if isinstance(client, RedisCluster):
        try:
            await client.initialize()
        except (RedisError, OSError) as exc:  # unreachable now: the limiter answers in its failure mode
            log.warning("Redis Cluster not reachable at start (%s); its slots will be learnt later",
                        type(exc).__name__)


def redis_client(url: str, cluster: bool, timeout_s: float, max_connections: int = 64) -> Redis | RedisCluster:
    if cluster:
        return RedisCluster.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                     max_connections=max_connections)
    return Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                          max_connections=max_connections)
