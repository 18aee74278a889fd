"""Limiter counters in Redis. Each decision and each settlement is one Lua script, timed by Redis'
own clock (TIME), so any number of limiter replicas share exact counts.

Every key a script touches is passed in KEYS, and all of one caller's keys share the hash tag in
`plan.key` (cw:{user:42}), so the scripts run unchanged on Redis Cluster (one slot per caller) and
under ACL key patterns:
  :req         sliding log (ZSET, member = request id, score = ms) of requests in the window
  :strict      the same for expensive endpoints
  :tok         HASH: UTC minute -> tokens reserved or used in it (older minutes dropped)
  :usd         HASH: UTC day -> nano-USD reserved or spent that day (older days dropped)
  :resv:<id>   the reservation of one granted request, until its llm.completed settles it
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import cast

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from services.limiter.limiter import StorageUnavailable
from services.limiter.policy import CounterReading, LimitPlan
from shared.events import LimitedBy
from shared.redis_client import CLIENT_COMMANDS

DECIDE = """
local req_key, strict_key, tok_key, usd_key, resv_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local request_id = ARGV[1]
local req_limit, window_ms = tonumber(ARGV[2]), tonumber(ARGV[3])
local strict_limit = tonumber(ARGV[4])
local tpm_limit, reserve_tokens = tonumber(ARGV[5]), tonumber(ARGV[6])
local budget, reserve_nano = tonumber(ARGV[7]), tonumber(ARGV[8])
local resv_ttl = tonumber(ARGV[9])

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local minute = math.floor(now / 60000)
local day = math.floor(now / 86400000)

local function window(key, limit)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window_ms)
  local count = redis.call('ZCARD', key)
  local reset = now + window_ms
  local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if oldest[2] then reset = tonumber(oldest[2]) + window_ms end
  return count, reset
end

local function current(hash, field, keep_from)
  for _, old in ipairs(redis.call('HKEYS', hash)) do
    if tonumber(old) < keep_from then redis.call('HDEL', hash, old) end
  end
  return tonumber(redis.call('HGET', hash, field) or '0')
end

local count, reset = window(req_key, req_limit)
local limit, remaining = req_limit, req_limit - count - 1

if redis.call('EXISTS', resv_key) == 1 then
  return {1, 'ok', limit, math.max(remaining + 1, 0), reset, now}
end
if count >= req_limit then
  return {0, 'requests', req_limit, 0, reset, now}
end
if strict_limit > 0 then
  local strict_count, strict_reset = window(strict_key, strict_limit)
  if strict_count >= strict_limit then
    return {0, 'strict', strict_limit, 0, strict_reset, now}
  end
  limit, remaining, reset = strict_limit, strict_limit - strict_count - 1, strict_reset
end
local used_tokens = current(tok_key, minute, minute - 1)
if used_tokens + reserve_tokens > tpm_limit then
  return {0, 'tokens', tpm_limit, math.max(tpm_limit - used_tokens, 0), (minute + 1) * 60000, now}
end
local spent = current(usd_key, day, day - 1)
if spent + reserve_nano > budget then
  return {0, 'budget', budget, math.max(budget - spent, 0), (day + 1) * 86400000, now}
end

redis.call('ZADD', req_key, now, request_id)
redis.call('PEXPIRE', req_key, window_ms)
if strict_limit > 0 then
  redis.call('ZADD', strict_key, now, request_id)
  redis.call('PEXPIRE', strict_key, window_ms)
end
redis.call('HINCRBY', tok_key, minute, reserve_tokens)
redis.call('EXPIRE', tok_key, 120)
redis.call('HINCRBY', usd_key, day, reserve_nano)
redis.call('EXPIRE', usd_key, 172800)
redis.call('HSET', resv_key, 'tokens', reserve_tokens, 'nano', reserve_nano, 'minute', minute, 'day', day)
redis.call('EXPIRE', resv_key, resv_ttl)
return {1, 'ok', limit, remaining, reset, now}
"""

SETTLE = """
local tok_key, usd_key, resv_key = KEYS[1], KEYS[2], KEYS[3]
local actual_tokens, actual_nano = tonumber(ARGV[1]), tonumber(ARGV[2])
local r = redis.call('HMGET', resv_key, 'tokens', 'nano', 'minute', 'day')
if not r[1] then return 0 end

local function adjust(hash, field, delta)
  local current = redis.call('HGET', hash, field)
  if current then
    redis.call('HSET', hash, field, math.max(0, tonumber(current) + delta))
  end
end
adjust(tok_key, r[3], actual_tokens - tonumber(r[1]))
adjust(usd_key, r[4], actual_nano - tonumber(r[2]))
redis.call('DEL', resv_key)
return 1
"""


KEY_PATTERN = "cw:*"


def acl_commands() -> list[str]:
    """Every command the limiter sends to Redis: the calls inside its scripts (ACLs apply there too),
    the commands that run them, the readiness ping and what redis-py's clients send."""
    inside = sorted({name.lower() for name in re.findall(r"redis\.call\('(\w+)'", DECIDE + SETTLE)})
    return [*inside, "evalsha", "eval", "script|load", "ping", *CLIENT_COMMANDS]


def caller_keys(base: str, request_id: str) -> dict[str, str]:
    """Every key of one caller's decision, all under its hash tag."""
    return {"req": f"{base}:req", "strict": f"{base}:strict", "tok": f"{base}:tok", "usd": f"{base}:usd",
            "resv": f"{base}:resv:{request_id}"}


class RedisLimiterStore:
    def __init__(self, redis: Redis | RedisCluster, reservation_ttl_s: int) -> None:
        self.redis = redis
        self.reservation_ttl_s = reservation_ttl_s
        self._decide = redis.register_script(DECIDE)

    async def check_and_reserve(self, plan: LimitPlan) -> CounterReading:
        keys = caller_keys(plan.key, plan.request_id)
        try:
            allowed, limited_by, limit, remaining, reset_ms, now_ms = await self._decide(
                keys=[keys["req"], keys["strict"], keys["tok"], keys["usd"], keys["resv"]],
                args=[plan.request_id, plan.requests_limit, plan.window_ms, plan.strict_limit,
                      plan.tokens_per_minute, plan.reserve_tokens, plan.budget_nano, plan.reserve_nano,
                      self.reservation_ttl_s],
            )
        except (RedisError, OSError, AttributeError) as exc:
            # AttributeError: redis-py's asyncio cluster client, when a timeout makes it reset its node
            # connections, can fail the commands still using them that way. Either way Redis did not
            # answer this decision, and the caller gets the failure mode's answer at once.
            raise StorageUnavailable(type(exc).__name__) from exc
        reason = limited_by.decode() if isinstance(limited_by, bytes) else str(limited_by)
        return CounterReading(
            allowed=bool(allowed), limited_by=None if reason == "ok" else cast(LimitedBy, reason), limit=int(limit),
            remaining=int(remaining), reset_ms=int(reset_ms), now_ms=int(now_ms),
        )

    async def settle_many(self, settlements: Sequence[tuple[str, str, int, int]]) -> int:
        """Settle (key, request id, actual tokens, actual nano-USD); returns how many reservations were
        still open. Settling twice is a no-op: the reservation is gone. The batch is one pipeline: one
        round trip on a single Redis; on a cluster redis-py splits it by slot into one round trip per
        master. It sends the script's text (EVAL), not its digest: redis-py refuses EVALSHA in a cluster
        pipeline, and a node that never saw the script (a promoted replica) would not know the digest."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for key, request_id, tokens, nano in settlements:
                k = caller_keys(key, request_id)
                pipe.eval(SETTLE, 3, k["tok"], k["usd"], k["resv"], tokens, nano)
            results = await pipe.execute()
        return sum(int(r) for r in results)
