"""API keys checked for the gateway's hot path: answers remembered for a short time, and the policy
for a key store that does not answer. The store itself is a port (pg_api_key_store.py is its
adapter), which only looks keys up."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from services.api.callers import Caller, InvalidCredentials, KeyStoreUnavailable
from shared.api_keys import hash_api_key
from shared.events import utc_now

log = logging.getLogger(__name__)

MAX_REMEMBERED = 100_000


@dataclass(frozen=True, slots=True)
class StoredKey:
    """An active key as its store holds it: whom it stands for, and until when."""

    caller: Caller
    expires_at: datetime | None


class ApiKeyStore(Protocol):
    async def find(self, digest: str) -> StoredKey | None:
        """The active key with this SHA-256 digest (None: no such key, or revoked); KeyStoreUnavailable
        when the store does not answer."""
        ...


class CachedKeyStore:
    """Looks keys up by hash, remembering each answer for `cache_s` seconds so that the hot path rarely
    reaches the store: a revoked key stops working within `cache_s`, an expired one at once (its expiry
    is remembered with it). While the store does not answer, a key seen before keeps its last answer
    (calls go on through a database outage); a key never seen gets KeyStoreUnavailable."""

    def __init__(self, store: ApiKeyStore, cache_s: float, clock: Callable[[], float] = time.monotonic,
                 now: Callable[[], datetime] = utc_now) -> None:
        self.store = store
        self.cache_s = cache_s
        self.clock = clock
        self.now = now
        self._remembered: dict[str, tuple[float, StoredKey | None]] = {}
        self._store_down = False

    async def caller_for(self, key: str) -> Caller:
        """The caller an API key stands for; InvalidCredentials for a wrong, revoked or expired key."""
        digest = hash_api_key(key)
        now = self.clock()
        remembered = self._remembered.get(digest)
        if remembered is None or remembered[0] < now:
            remembered = await self._look_up(digest, now, remembered)
        found = remembered[1]
        if found is None:
            raise InvalidCredentials("Invalid API key")
        if found.expires_at is not None and found.expires_at <= self.now():
            raise InvalidCredentials("API key expired")
        return found.caller

    async def _look_up(self, digest: str, now: float, remembered: tuple[float, StoredKey | None] | None
                       ) -> tuple[float, StoredKey | None]:
        try:
            found = await self.store.find(digest)
        except KeyStoreUnavailable as exc:
            if not self._store_down:
                log.warning("API key store unavailable (%s): known keys keep their last answer, new keys get 503",
                            exc)
                self._store_down = True
            if remembered is None:
                raise
            return remembered
        if self._store_down:
            log.info("API key store answers again")
            self._store_down = False
        if len(self._remembered) > MAX_REMEMBERED:
            self._remembered.clear()
        answer = self._remembered[digest] = (now + self.cache_s, found)
        return answer
