"""API keys behind their cache, with an in-memory key store: how long an answer is remembered, and what
callers get while the store does not answer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.api.cached_key_store import CachedKeyStore, StoredKey
from services.api.callers import Caller, InvalidCredentials, KeyStoreUnavailable
from shared.api_keys import hash_api_key

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
ANN = Caller("ann", "pro", key_id=7)


class FakeStore:
    def __init__(self) -> None:
        self.keys: dict[str, StoredKey] = {}
        self.down = False
        self.lookups = 0

    def add(self, key: str, caller: Caller, expires_at: datetime | None = None) -> None:
        self.keys[hash_api_key(key)] = StoredKey(caller, expires_at)

    async def find(self, digest: str) -> StoredKey | None:
        self.lookups += 1
        if self.down:
            raise KeyStoreUnavailable("ConnectionRefusedError")
        return self.keys.get(digest)


class Clock:
    def __init__(self) -> None:
        self.monotonic = 0.0
        self.now = NOW

    def advance(self, seconds: float) -> None:
        self.monotonic += seconds
        self.now += timedelta(seconds=seconds)


def cached(store: FakeStore, clock: Clock, cache_s: float = 30) -> CachedKeyStore:
    return CachedKeyStore(store, cache_s, clock=lambda: clock.monotonic, now=lambda: clock.now)


async def test_an_answer_is_remembered_for_the_cache_time_then_asked_again():
    store, clock = FakeStore(), Clock()
    store.add("cw_ann", ANN)
    keys = cached(store, clock)
    assert await keys.caller_for("cw_ann") == ANN
    del store.keys[hash_api_key("cw_ann")]  # revoked
    clock.advance(29)
    assert await keys.caller_for("cw_ann") == ANN and store.lookups == 1
    clock.advance(2)
    with pytest.raises(InvalidCredentials, match="Invalid API key"):
        await keys.caller_for("cw_ann")
    assert store.lookups == 2


async def test_an_expired_key_is_refused_at_once_even_while_remembered():
    store, clock = FakeStore(), Clock()
    store.add("cw_short", ANN, expires_at=NOW + timedelta(seconds=10))
    keys = cached(store, clock)
    assert await keys.caller_for("cw_short") == ANN
    clock.advance(11)
    with pytest.raises(InvalidCredentials, match="expired"):
        await keys.caller_for("cw_short")
    assert store.lookups == 1


async def test_an_outage_keeps_known_keys_working_and_tells_new_keys_to_retry():
    store, clock = FakeStore(), Clock()
    store.add("cw_known", ANN)
    store.add("cw_new", Caller("bob", "free", key_id=8))
    keys = cached(store, clock, cache_s=5)
    assert await keys.caller_for("cw_known") == ANN
    store.down = True
    clock.advance(60)  # long past the cache time: the last answer still stands
    assert await keys.caller_for("cw_known") == ANN
    with pytest.raises(KeyStoreUnavailable):
        await keys.caller_for("cw_new")
    store.down = False
    assert (await keys.caller_for("cw_new")).user_id == "bob"


async def test_a_wrong_key_remembered_during_an_outage_stays_wrong():
    store, clock = FakeStore(), Clock()
    keys = cached(store, clock, cache_s=0)
    with pytest.raises(InvalidCredentials):
        await keys.caller_for("cw_wrong")
    store.down = True
    clock.advance(1)
    with pytest.raises(InvalidCredentials):
        await keys.caller_for("cw_wrong")
