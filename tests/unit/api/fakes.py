"""In-memory fakes of the api's ports that several tests use."""

from __future__ import annotations

from services.api.breaker import CircuitBreaker
from services.api.providers import Deployment, ProviderClient, ProviderRouter, RouteCeilings
from services.api.response_cache import CacheUnavailable
from shared.events import LlmCompleted


class Words:
    """A token counter: one token a word."""

    def count(self, text: str) -> int:
        return len(text.split())


class Recorded:
    """A completion publisher that keeps what it is given."""

    def __init__(self) -> None:
        self.events: list[LlmCompleted] = []

    async def publish(self, event: LlmCompleted) -> None:
        self.events.append(event)

    async def drain(self, timeout_s: float) -> None: ...


def router_of(*clients: ProviderClient, max_retries: int = 0, ceilings: RouteCeilings | None = None,
              limits: dict[str, tuple[int | None, int | None]] | None = None) -> ProviderRouter:
    """A router over these clients, each its own deployment with a fresh breaker (5 failures, 30 s) and
    `limits` (provider -> (rpm, tpm)); retries without waiting."""
    limits = limits or {}
    return ProviderRouter({c.name: Deployment(c, CircuitBreaker(5, 30), max_retries, *limits.get(c.name, (None, None)))
                           for c in clients}, ceilings, retry_initial_s=0.001, retry_max_s=0.002)


class MemoryStore:
    """ResponseCacheStore in memory; `down` answers as a store that cannot be reached."""

    def __init__(self) -> None:
        self.entries: dict[str, tuple[bytes, int]] = {}
        self.down = False

    async def get(self, key: str) -> bytes | None:
        if self.down:
            raise CacheUnavailable("ConnectionRefusedError")
        found = self.entries.get(key)
        return found[0] if found else None

    async def put(self, key: str, value: bytes, ttl_s: int) -> None:
        if self.down:
            raise CacheUnavailable("ConnectionRefusedError")
        self.entries[key] = (value, ttl_s)
