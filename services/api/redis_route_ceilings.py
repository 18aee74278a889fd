"""The deployments' rpm/tpm ceilings in Redis, shared by every gateway replica: one Lua script per
admission, timed by Redis' own clock (TIME), counts a call in its deployment's current UTC minute or
says how long until the next. Asked only for providers that declare a ceiling.

One key per deployment, `cwapi:{deploy:<provider>}:minute`, a HASH of `r<minute>` (calls) and
`t<minute>` (tokens) for the current minute (older fields dropped, the key expires after two minutes
unused). The `cwapi:` prefix is the api's own in the Redis ACL (`costwarden redis-acl`); the hash tag
keeps the script on one slot of a Redis Cluster.

A call's tokens are its prompt and completion limit, counted when it is sent, as OpenAI and Azure
count a request against their own tpm limits; retries of a call to one deployment count once."""

from __future__ import annotations

import re

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from services.api.providers import CeilingsUnavailable
from shared.redis_client import CLIENT_COMMANDS, PausedAfterFailure

ADMIT = """
local key = KEYS[1]
local rpm, tpm, tokens = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local minute = math.floor(now / 60000)
local calls_field, tokens_field = 'r' .. minute, 't' .. minute
local calls = tonumber(redis.call('HGET', key, calls_field) or '0')
local used = tonumber(redis.call('HGET', key, tokens_field) or '0')
if (rpm > 0 and calls + 1 > rpm) or (tpm > 0 and used > 0 and used + tokens > tpm) then
  return (minute + 1) * 60000 - now
end
for _, field in ipairs(redis.call('HKEYS', key)) do
  if field ~= calls_field and field ~= tokens_field then redis.call('HDEL', key, field) end
end
redis.call('HINCRBY', key, calls_field, 1)
redis.call('HINCRBY', key, tokens_field, tokens)
redis.call('PEXPIRE', key, 120000)
return 0
"""

KEY_PATTERN = "cwapi:*"
# After Redis failed to answer, it is not asked again for this long: every call in the meantime goes
# unchecked at once rather than each waiting out the timeout.
RETRY_AFTER_FAILURE_S = 1.0


def deployment_key(provider: str) -> str:
    return f"cwapi:{{deploy:{provider}}}:minute"


def acl_commands() -> list[str]:
    """Every command the api sends to Redis: the calls inside its script, the commands that run it and
    what redis-py's clients send."""
    inside = sorted({name.lower() for name in re.findall(r"redis\.call\('(\w+)'", ADMIT)})
    return [*inside, "evalsha", "eval", "script|load", "ping", *CLIENT_COMMANDS]


class RedisRouteCeilings:
    """While Redis does not answer, ceilings go unchecked (the calls go on; a provider over its own
    limit answers 429, which fails over as any 429): said once in the log when it starts and once when
    it ends, and counted per call by the router."""

    def __init__(self, redis: Redis | RedisCluster, retry_after_failure_s: float = RETRY_AFTER_FAILURE_S) -> None:
        self._admit = redis.register_script(ADMIT)
        self.paused = PausedAfterFailure(CeilingsUnavailable,
                                         "deployments' rpm/tpm ceilings go unchecked until it answers",
                                         "deployments' rpm/tpm ceilings are checked", retry_after_failure_s)

    async def admit(self, provider: str, rpm: int | None, tpm: int | None, tokens: int) -> float:
        """0 when the call is counted, else the seconds until the next minute; a call whose tokens alone
        pass the tpm ceiling is still taken in an empty minute (the provider decides about it)."""
        wait_ms = await self.paused.ask(
            lambda: self._admit(keys=[deployment_key(provider)], args=[rpm or 0, tpm or 0, tokens]))
        return int(wait_ms) / 1000
