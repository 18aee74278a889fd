"""API key lookups in Postgres (`api_keys`, by SHA-256 digest, with its user's team); CachedKeyStore
(cached_key_store.py) sits in front. Creating, revoking and rotating keys is services/keys/."""

from __future__ import annotations

import asyncpg

from services.api.cached_key_store import StoredKey
from services.api.callers import Caller, KeyStoreUnavailable

LOOKUP_TIMEOUT_S = 2.0
# The key, and a note of its use (at most one write a minute per key), in one round trip.
LOOKUP = """
WITH found AS (SELECT id, user_id, tier, is_admin, expires_at FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL),
     used AS (UPDATE api_keys k SET last_used_at = now() FROM found
              WHERE k.id = found.id AND (k.last_used_at IS NULL OR k.last_used_at < now() - interval '1 minute'))
SELECT id, user_id, tier, is_admin, expires_at,
       (SELECT team_id FROM team_members m WHERE m.user_id = found.user_id) AS team_id
FROM found
"""


class PgApiKeyStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def find(self, digest: str) -> StoredKey | None:
        try:
            row = await self.pool.fetchrow(LOOKUP, digest, timeout=LOOKUP_TIMEOUT_S)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise KeyStoreUnavailable(type(exc).__name__) from exc
        if row is None:
            return None
        return StoredKey(Caller(row["user_id"], row["tier"], row["is_admin"], row["id"], row["team_id"]),
                         row["expires_at"])
