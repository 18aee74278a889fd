"""API key lookups for the gateway, in Postgres (`api_keys`, hashed), with a short cache. Creating,
revoking and rotating keys is pg_key_admin.py."""

from __future__ import annotations

import logging
import time
from datetime import datetime

import asyncpg

from services.api.callers import (
    Caller,
    InvalidCredentials,
    KeyStoreUnavailable,
)
from shared.api_keys import hash_api_key
from shared.events import utc_now

log = logging.getLogger(__name__)

LOOKUP_TIMEOUT_S = 2.0
# The key, and a note of its use (at most one write a minute per key), in one round trip.
LOOKUP = """
WITH found AS (SELECT id, user_id, tier, is_admin, expires_at FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL),
     used AS (UPDATE api_keys k SET last_used_at = now() FROM found
              WHERE k.id = found.id AND (k.last_used_at IS NULL OR k.last_used_at < now() - interval '1 minute'))
SELECT id, user_id, tier, is_admin, expires_at FROM found
"""


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
                row = await self.pool.fetchrow(LOOKUP, digest, timeout=LOOKUP_TIMEOUT_S)
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
                caller = Caller(row["user_id"], row["tier"], row["is_admin"], row["id"]) if row else None
                if len(self._cache) > 100_000:
                    self._cache.clear()
                hit = self._cache[digest] = (now + self.cache_s, caller, row["expires_at"] if row else None)
        _, caller, expires_at = hit
        if caller is None:
            raise InvalidCredentials("Invalid API key")
        if expires_at is not None and expires_at <= utc_now():
            raise InvalidCredentials("API key expired")
        return caller
