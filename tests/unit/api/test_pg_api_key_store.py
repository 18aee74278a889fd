"""The key store when PostgreSQL does not answer (found by the soak: every call failed with a 500 while
the database was down): a key seen before keeps its last answer; a key never seen is 'unavailable'.
The SQL adapter turns the driver's failure into KeyStoreUnavailable; CachedKeyStore keeps the answers."""

from __future__ import annotations

import pytest

from services.api.cached_key_store import CachedKeyStore
from services.api.callers import KeyStoreUnavailable
from services.api.pg_api_key_store import PgApiKeyStore
from shared.api_keys import hash_api_key


class FlakyPool:
    def __init__(self) -> None:
        self.rows: dict[str, dict] = {}
        self.down = False

    async def fetchrow(self, query: str, digest: str, **options: object) -> dict | None:
        if self.down:
            raise ConnectionRefusedError(111, "Connection refused")
        return self.rows.get(digest)


async def test_a_known_key_keeps_working_through_an_outage_and_a_new_key_is_told_to_retry():
    pool = FlakyPool()
    pool.rows[hash_api_key("cw_known")] = {"id": 7, "user_id": "ann", "tier": "pro", "is_admin": False,
                                           "expires_at": None, "team_id": None}
    store = CachedKeyStore(PgApiKeyStore(pool), cache_s=0)  # type: ignore[arg-type]
    assert (await store.caller_for("cw_known")).user_id == "ann"
    pool.down = True
    assert (await store.caller_for("cw_known")).user_id == "ann"
    with pytest.raises(KeyStoreUnavailable):
        await store.caller_for("cw_never_seen")
    pool.down = False
    del pool.rows[hash_api_key("cw_known")]  # revoked meanwhile: the next answer from the database counts
    with pytest.raises(Exception, match="Invalid API key"):
        await store.caller_for("cw_known")
