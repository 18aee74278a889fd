"""API keys in Postgres (`api_keys`, hashed): lookups for the gateway, with a short cache, and the
key commands of the CLI."""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta

import asyncpg

from services.api.callers import (
    DISPLAY_PREFIX_LEN,
    Caller,
    InvalidCredentials,
    KeyStoreUnavailable,
    display_prefix,
    hash_api_key,
    new_api_key,
)
from shared.events import utc_now

log = logging.getLogger(__name__)

LOOKUP_TIMEOUT_S = 2.0


class PgApiKeyStore:
    """Looks keys up by hash, remembering answers for a short time so that the hot path rarely
    touches Postgres. A revoked key stops working within `cache_s` seconds; an expired one at once
    (its expiry is remembered with it). While Postgres does not answer, a key seen before keeps its
    last answer (calls go on through a database outage); a key never seen gets KeyStoreUnavailable."""

    def __init__(self, pool: asyncpg.Pool, cache_s: float) -> None:
        self.pool = pool
        self.cache_s = cache_s
        self._cache: dict[str, tuple[float, Caller | None, datetime | None]] = {}
        self._unavailable = False

    async def caller_for(self, key: str) -> Caller:
        digest = hash_api_key(key)
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is None or hit[0] < now:
            try:
                row = await self.pool.fetchrow(
                    "SELECT user_id, tier, is_admin, expires_at FROM api_keys WHERE key_hash = $1"
                    " AND revoked_at IS NULL", digest, timeout=LOOKUP_TIMEOUT_S)
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                if not self._unavailable:
                    log.warning("API key store unavailable (%s): known keys keep their last answer, new keys get 503",
                                type(exc).__name__)
                    self._unavailable = True
                if hit is None:
                    raise KeyStoreUnavailable(type(exc).__name__) from exc
            else:
                if self._unavailable:
                    log.info("API key store answers again")
                    self._unavailable = False
                caller = Caller(row["user_id"], row["tier"], row["is_admin"]) if row else None
                if len(self._cache) > 100_000:
                    self._cache.clear()
                hit = self._cache[digest] = (now + self.cache_s, caller, row["expires_at"] if row else None)
        _, caller, expires_at = hit
        if caller is None:
            raise InvalidCredentials("Invalid API key")
        if expires_at is not None and expires_at <= utc_now():
            raise InvalidCredentials("API key expired")
        return caller


async def create_key(conn: asyncpg.Connection, user_id: str, tier: str, is_admin: bool = False,
                     label: str | None = None, expires_in: timedelta | None = None) -> str:
    key = new_api_key()
    await conn.execute(
        "INSERT INTO api_keys (key_hash, key_prefix, user_id, tier, is_admin, label, expires_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7)",
        hash_api_key(key), display_prefix(key), user_id, tier, is_admin, label,
        utc_now() + expires_in if expires_in else None,
    )
    return key


async def active_key_id(conn: asyncpg.Connection, key_or_prefix: str) -> int:
    """The id of the active key given in full, or by a displayed prefix that names exactly one; 0 when
    none matches, -n when n keys share the prefix."""
    if len(key_or_prefix) > DISPLAY_PREFIX_LEN:
        rows = await conn.fetch("SELECT id FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
                                hash_api_key(key_or_prefix))
    else:
        rows = await conn.fetch("SELECT id FROM api_keys WHERE key_prefix = $1 AND revoked_at IS NULL", key_or_prefix)
    return int(rows[0]["id"]) if len(rows) == 1 else -len(rows)


async def rotate_key(conn: asyncpg.Connection, key_id: int, grace: timedelta) -> str:
    """A new key for the same user, tier, rights and label (and the same remaining lifetime, if any);
    the old key keeps working for `grace`, then expires."""
    async with conn.transaction():
        old = await conn.fetchrow("SELECT user_id, tier, is_admin, label, expires_at FROM api_keys WHERE id = $1"
                                  " FOR UPDATE", key_id)
        now = utc_now()
        key = await create_key(conn, old["user_id"], old["tier"], old["is_admin"], old["label"],
                               old["expires_at"] - now if old["expires_at"] else None)
        await conn.execute("UPDATE api_keys SET expires_at = least(coalesce(expires_at, $2), $2) WHERE id = $1",
                           key_id, now + grace)
    return key


async def revoke_key(conn: asyncpg.Connection, key_or_prefix: str) -> int:
    """Revoke by full key, or by the displayed prefix when it names exactly one active key: 1 when
    revoked, 0 when no active key matches, -n when n share the prefix."""
    key_id = await active_key_id(conn, key_or_prefix)
    if key_id > 0:
        await conn.execute("UPDATE api_keys SET revoked_at = now() WHERE id = $1", key_id)
        return 1
    return key_id
