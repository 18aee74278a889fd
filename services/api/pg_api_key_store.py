"""API keys in Postgres (`api_keys`, hashed): lookups for the gateway, with a short cache, and the
key commands of the CLI."""

from __future__ import annotations

import time

import asyncpg

from services.api.callers import (
    DISPLAY_PREFIX_LEN,
    Caller,
    InvalidCredentials,
    display_prefix,
    hash_api_key,
    new_api_key,
)


class PgApiKeyStore:
    """Looks keys up by hash, remembering answers for a short time so that the hot path rarely
    touches Postgres. A revoked key stops working within `cache_s` seconds."""

    def __init__(self, pool: asyncpg.Pool, cache_s: float) -> None:
        self.pool = pool
        self.cache_s = cache_s
        self._cache: dict[str, tuple[float, Caller | None]] = {}

    async def caller_for(self, key: str) -> Caller:
        digest = hash_api_key(key)
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is None or hit[0] < now:
            row = await self.pool.fetchrow(
                "SELECT user_id, tier, is_admin FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL", digest
            )
            caller = Caller(row["user_id"], row["tier"], row["is_admin"]) if row else None
            if len(self._cache) > 100_000:
                self._cache.clear()
            self._cache[digest] = (now + self.cache_s, caller)
            hit = self._cache[digest]
        if hit[1] is None:
            raise InvalidCredentials("Invalid API key")
        return hit[1]


async def create_key(conn: asyncpg.Connection, user_id: str, tier: str, is_admin: bool = False,
                     label: str | None = None) -> str:
    key = new_api_key()
    await conn.execute(
        "INSERT INTO api_keys (key_hash, key_prefix, user_id, tier, is_admin, label) VALUES ($1, $2, $3, $4, $5, $6)",
        hash_api_key(key), display_prefix(key), user_id, tier, is_admin, label,
    )
    return key


async def revoke_key(conn: asyncpg.Connection, key_or_prefix: str) -> int:
    """Revoke by full key, or by the displayed prefix when it names exactly one active key."""
    if len(key_or_prefix) > DISPLAY_PREFIX_LEN:
        result = await conn.execute(
            "UPDATE api_keys SET revoked_at = now() WHERE key_hash = $1 AND revoked_at IS NULL",
            hash_api_key(key_or_prefix),
        )
        return int(result.split()[-1])
    rows = await conn.fetch("SELECT id FROM api_keys WHERE key_prefix = $1 AND revoked_at IS NULL", key_or_prefix)
    if len(rows) != 1:
        return 0 if not rows else -len(rows)
    await conn.execute("UPDATE api_keys SET revoked_at = now() WHERE id = $1", rows[0]["id"])
    return 1
