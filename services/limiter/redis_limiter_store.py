"""Limiter counters in Redis. Each decision and each settlement is one Lua script, timed by Redis'
own clock (TIME), so any number of limiter replicas share exact counts.

Every key a script touches is passed in KEYS, and all of one caller's keys share one hash tag (its team's
when its user is in one, else its user's or IP's: services/limiter/scopes.py), so the scripts run
unchanged on Redis Cluster (one slot per caller) and under ACL key patterns. Under the caller's base
(`plan.key`: `cw:{user:42}`, or `cw:{team:research}:u:42` for a team member):
  :req         sliding log (ZSET, member = request id, score = ms) of requests in the tier's window
  :strict      the same for expensive endpoints
  :tok         HASH: UTC minute -> tokens reserved or used in it (older minutes dropped)
  :usd         HASH: UTC day -> nano-USD reserved or spent that day (older days dropped)
  :resv:<id>   the reservation of one granted request, until its llm.completed settles it: what it
               reserved, and on which field of which counter
and under the tag, the counters of the key's, user's and team's own limits (`<tag>:L:<k|u|t>:<id>`):
  :req         sliding log of the scope's request window
  :tok         HASH: UTC minute -> tokens
  :b:<period>  HASH: a calendar budget's period start (epoch ms) -> nano-USD (older periods dropped), or a
               rolling budget's bucket -> nano-USD (buckets past the window dropped)
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
from services.limiter.scopes import CounterSeed, tag_of
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
-- A cache hit ('1') is counted in the request windows only: no tokens, dollars or reservation.
local hit = ARGV[10] == '1'
-- Scope checks: six values each from ARGV[12] (kind, limit, three parameters, the counter's name after
-- the caller's tag, recorded in the reservation); KEYS[5 + i] is check i's counter.
local checks = tonumber(ARGV[11]) or 0

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local minute = math.floor(now / 60000)
local day = math.floor(now / 86400000)

local function window(key, span_ms)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - span_ms)
  local count = redis.call('ZCARD', key)
  local reset = now + span_ms
  local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if oldest[2] then reset = tonumber(oldest[2]) + span_ms end
  return count, reset
end

local function current(hash, field, keep_from)
  for _, old in ipairs(redis.call('HKEYS', hash)) do
    if tonumber(old) < keep_from then redis.call('HDEL', hash, old) end
  end
  return tonumber(redis.call('HGET', hash, field) or '0')
end

local function rolling(hash, bucket, buckets)
  local spent, oldest = 0, bucket
  local all = redis.call('HGETALL', hash)
  for j = 1, #all, 2 do
    local field, value = tonumber(all[j]), tonumber(all[j + 1])
    if field < bucket - buckets then
      redis.call('HDEL', hash, all[j])
    else
      spent = spent + value
      if field < oldest and value > 0 then oldest = field end
    end
  end
  return spent, oldest
end

local count, reset = window(req_key, window_ms)
local limit, remaining = req_limit, req_limit - count - 1

if redis.call('EXISTS', resv_key) == 1 or (hit and redis.call('ZSCORE', req_key, request_id)) then
  return {1, 'ok', limit, math.max(remaining + 1, 0), reset, now}
end
if count >= req_limit then
  return {0, 'requests', req_limit, 0, reset, now}
end
if strict_limit > 0 then
  local strict_count, strict_reset = window(strict_key, window_ms)
  if strict_count >= strict_limit then
    return {0, 'strict', strict_limit, 0, strict_reset, now}
  end
  limit, remaining, reset = strict_limit, strict_limit - strict_count - 1, strict_reset
end
if not hit then
  local used_tokens = current(tok_key, minute, minute - 1)
  if used_tokens + reserve_tokens > tpm_limit then
    return {0, 'tokens', tpm_limit, math.max(tpm_limit - used_tokens, 0), (minute + 1) * 60000, now}
  end
  local spent = current(usd_key, day, day - 1)
  if spent + reserve_nano > budget then
    return {0, 'budget', budget, math.max(budget - spent, 0), (day + 1) * 86400000, now}
  end
end

local fields = {}
for i = 1, checks do
  local at = 6 + i * 6
  local kind, cap = ARGV[at], tonumber(ARGV[at + 1])
  local a, b, c = tonumber(ARGV[at + 2]), tonumber(ARGV[at + 3]), tonumber(ARGV[at + 4])
  local key = KEYS[5 + i]
  if kind == 'requests' then  -- a: the window (ms)
    local n, r = window(key, a)
    if n >= cap then return {0, 'requests', cap, 0, r, now, i, n} end
  elseif kind == 'tokens' then
    local used = current(key, minute, minute - 1)
    if used + reserve_tokens > cap then
      return {0, 'tokens', cap, math.max(cap - used, 0), (minute + 1) * 60000, now, i, used}
    end
    fields[i] = minute
  elseif kind == 'calendar' then  -- a, b: the current period's start and end; c: the next one's end
    local field, ends = a, b
    if now >= b then field, ends = b, c end
    local used = current(key, field, field)
    if used + reserve_nano > cap then return {0, 'budget', cap, math.max(cap - used, 0), ends, now, i, used} end
    fields[i] = field
  else  -- rolling; a: the bucket (ms), b: the buckets counted before the current one
    local bucket = math.floor(now / a)
    local used, oldest = rolling(key, bucket, b)
    if used + reserve_nano > cap then
      return {0, 'budget', cap, math.max(cap - used, 0), (oldest + b + 1) * a, now, i, used}
    end
    fields[i] = bucket
  end
end

redis.call('ZADD', req_key, now, request_id)
redis.call('PEXPIRE', req_key, window_ms)
if strict_limit > 0 then
  redis.call('ZADD', strict_key, now, request_id)
  redis.call('PEXPIRE', strict_key, window_ms)
end
if hit then  -- the policy passes a hit's request windows only
  for i = 1, checks do
    redis.call('ZADD', KEYS[5 + i], now, request_id)
    redis.call('PEXPIRE', KEYS[5 + i], tonumber(ARGV[8 + i * 6]))
  end
  return {1, 'ok', limit, remaining, reset, now}
end
redis.call('HINCRBY', tok_key, minute, reserve_tokens)
redis.call('EXPIRE', tok_key, 120)
redis.call('HINCRBY', usd_key, day, reserve_nano)
redis.call('EXPIRE', usd_key, 172800)
local counters = {}
for i = 1, checks do
  local at = 6 + i * 6
  local kind, a, b, c, name = ARGV[at], tonumber(ARGV[at + 2]), tonumber(ARGV[at + 3]), tonumber(ARGV[at + 4]),
                              ARGV[at + 5]
  local key = KEYS[5 + i]
  if kind == 'requests' then
    redis.call('ZADD', key, now, request_id)
    redis.call('PEXPIRE', key, a)
  elseif kind == 'tokens' then
    redis.call('HINCRBY', key, fields[i], reserve_tokens)
    redis.call('EXPIRE', key, 120)
    counters[#counters + 1] = 't ' .. fields[i] .. ' ' .. name
  else
    redis.call('HINCRBY', key, fields[i], reserve_nano)
    if kind == 'calendar' then
      redis.call('PEXPIREAT', key, (fields[i] == a and b or c) + 86400000)
    else
      redis.call('PEXPIRE', key, (b + 2) * a)
    end
    counters[#counters + 1] = 'u ' .. fields[i] .. ' ' .. name
  end
end
redis.call('HSET', resv_key, 'tokens', reserve_tokens, 'nano', reserve_nano, 'minute', minute, 'day', day)
if #counters > 0 then redis.call('HSET', resv_key, 'c', table.concat(counters, '\\n')) end
redis.call('EXPIRE', resv_key, resv_ttl)
return {1, 'ok', limit, remaining, reset, now}
"""

SETTLE = """
local tok_key, usd_key, resv_key = KEYS[1], KEYS[2], KEYS[3]
local actual_tokens, actual_nano = tonumber(ARGV[1]), tonumber(ARGV[2])
local r = redis.call('HMGET', resv_key, 'tokens', 'nano', 'minute', 'day', 'c')
if not r[1] then return 0 end
-- A reservation that also counted on scope counters lists them; settling it needs their keys (KEYS[4..],
-- in the listed order): asked without them, the script answers the list and changes nothing.
if r[5] and #KEYS == 3 then return r[5] end

local function adjust(hash, field, delta)
  local current = redis.call('HGET', hash, field)
  if current then
    redis.call('HSET', hash, field, math.max(0, tonumber(current) + delta))
  end
end
local tokens, nano = actual_tokens - tonumber(r[1]), actual_nano - tonumber(r[2])
adjust(tok_key, r[3], tokens)
adjust(usd_key, r[4], nano)
local i = 3
for kind, field in string.gmatch(r[5] or '', '(%a) (%d+) [^\\n]+') do
  i = i + 1
  adjust(KEYS[i], field, kind == 't' and tokens or nano)
end
redis.call('DEL', resv_key)
return 1
"""

SEED = """
if ARGV[1] == '1' and redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local written = 0
for i = 3, #ARGV, 2 do
  written = written + redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1])
end
if written > 0 then redis.call('PEXPIREAT', KEYS[1], tonumber(ARGV[2])) end
return written
"""

SCRIPTS = DECIDE + SETTLE + SEED

KEY_PATTERN = "cw:*"


def acl_commands() -> list[str]:
    """Every command the limiter sends to Redis: the calls inside its scripts (ACLs apply there too),
    the commands that run them, the readiness ping and what redis-py's clients send."""
    inside = sorted({name.lower() for name in re.findall(r"redis\.call\('(\w+)'", SCRIPTS)})
    return [*inside, "evalsha", "eval", "script|load", "ping", *CLIENT_COMMANDS]


def caller_keys(base: str, request_id: str) -> dict[str, str]:
    """Every key of one caller's decision, all under its hash tag."""
    return {"req": f"{base}:req", "strict": f"{base}:strict", "tok": f"{base}:tok", "usd": f"{base}:usd",
            "resv": f"{base}:resv:{request_id}"}


def check_args(plan: LimitPlan) -> list[str | int]:
    args: list[str | int] = [len(plan.checks)]
    for check in plan.checks:
        args += [check.kind, check.limit, *check.params, check.suffix]
    return args


def scoped_keys(base: str, request_id: str, counters: str) -> list[str]:
    """The keys SETTLE needs for a reservation that counted on scope counters too: the tier's tokens and
    dollars, the reservation, then each scope counter it lists ("<t|u> <field> <name after the tag>" a
    line), in its order."""
    keys = caller_keys(base, request_id)
    tag = tag_of(base)
    return [keys["tok"], keys["usd"], keys["resv"], *(tag + line.split(" ", 2)[2] for line in counters.splitlines())]


class RedisLimiterStore:
    def __init__(self, redis: Redis | RedisCluster, reservation_ttl_s: int) -> None:
        self.redis = redis
        self.reservation_ttl_s = reservation_ttl_s
        self._decide = redis.register_script(DECIDE)

    async def check_and_reserve(self, plan: LimitPlan) -> CounterReading:
        keys = caller_keys(plan.key, plan.request_id)
        args: list[str | int] = [plan.request_id, plan.requests_limit, plan.window_ms, plan.strict_limit,
                                 plan.tokens_per_minute, plan.reserve_tokens, plan.budget_nano, plan.reserve_nano,
                                 self.reservation_ttl_s, int(plan.cache_hit)]
        names = [keys["req"], keys["strict"], keys["tok"], keys["usd"], keys["resv"]]
        if plan.checks:
            tag = tag_of(plan.key)
            names += [check.key(tag) for check in plan.checks]
            args += check_args(plan)
        try:
            answer = await self._decide(keys=names, args=args)
        except (RedisError, OSError, AttributeError) as exc:
            # AttributeError: redis-py's asyncio cluster client, when a timeout makes it reset its node
            # connections, can fail the commands still using them that way. Either way Redis did not
            # answer this decision, and the caller gets the failure mode's answer at once.
            raise StorageUnavailable(type(exc).__name__) from exc
        allowed, limited_by, limit, remaining, reset_ms, now_ms = answer[:6]
        reason = limited_by.decode() if isinstance(limited_by, bytes) else str(limited_by)
        return CounterReading(
            allowed=bool(allowed), limited_by=None if reason == "ok" else cast(LimitedBy, reason), limit=int(limit),
            remaining=int(remaining), reset_ms=int(reset_ms), now_ms=int(now_ms),
            check=int(answer[6]) if len(answer) > 6 else 0, used=int(answer[7]) if len(answer) > 7 else 0,
        )

    async def settle_many(self, settlements: Sequence[tuple[str, str, int, int]]) -> int:
        """Settle (key, request id, actual tokens, actual nano-USD); returns how many reservations were
        still open. Settling twice is a no-op: the reservation is gone. The batch is one pipeline: one
        round trip on a single Redis; on a cluster redis-py splits it by slot into one round trip per
        master. It sends the script's text (EVAL), not its digest: redis-py refuses EVALSHA in a cluster
        pipeline, and a node that never saw the script (a promoted replica) would not know the digest.

        A reservation that also counted on a key's, user's or team's counters answers with their names
        instead, and is settled by a second pipeline that passes them as keys: a script may only touch the
        keys it is given."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for key, request_id, tokens, nano in settlements:
                k = caller_keys(key, request_id)
                pipe.eval(SETTLE, 3, k["tok"], k["usd"], k["resv"], tokens, nano)
            results = await pipe.execute()
        settled = sum(r for r in results if isinstance(r, int))
        scoped = [(settlement, answer.decode() if isinstance(answer, bytes) else str(answer))
                  for settlement, answer in zip(settlements, results, strict=True) if not isinstance(answer, int)]
        if scoped:
            async with self.redis.pipeline(transaction=False) as pipe:
                for (key, request_id, tokens, nano), counters in scoped:
                    keys = scoped_keys(key, request_id, counters)
                    pipe.eval(SETTLE, len(keys), *keys, tokens, nano)
                settled += sum(int(r) for r in await pipe.execute())
        return settled

    async def seed(self, seeds: Sequence[CounterSeed]) -> int:
        """Start each counter from the given spend where it has none yet; how many fields were written."""
        if not seeds:
            return 0
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for seed in seeds:
                    pairs = [value for field, nano in seed.fields.items() for value in (field, nano)]
                    pipe.eval(SEED, 1, seed.key, int(seed.only_if_absent), seed.expire_at_ms, *pairs)
                results = await pipe.execute()
        except (RedisError, OSError, AttributeError) as exc:
            raise StorageUnavailable(type(exc).__name__) from exc
        return sum(int(r) for r in results)
