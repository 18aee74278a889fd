"""LLM providers behind one interface: the routes of a model tried in order (Together.ai first,
OpenAI as fallback), each with bounded retries on 429/5xx/network errors (shared/backoff.py, with
jitter) and a circuit breaker. The HTTP client is a port (aiohttp_provider_client.py is its adapter)."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from services.api.breaker import CircuitBreaker
from shared.backoff import backoff_s
from shared.policy import ModelRoute

log = logging.getLogger(__name__)


class ProviderError(Exception):
    """One failed attempt. `billable`: the provider had the request and may have worked on it (a timeout
    while waiting for the answer, a connection cut mid-answer); providers bill such attempts."""

    def __init__(self, provider: str, message: str, status: int | None = None, timeout: bool = False,
                 billable: bool = False) -> None:
        super().__init__(message)
        self.provider = provider
        self.status = status
        self.timeout = timeout
        self.billable = billable
        self.served_model = ""  # the provider's model the attempt asked for (set by the router)

    @property
    def retryable(self) -> bool:
        return self.timeout or self.status is None or self.status == 429 or self.status >= 500

    def describe(self) -> str:
        if self.timeout:
            return f"{self.provider}: timed out"
        if self.status is None:
            return f"{self.provider}: {self}"
        return f"{self.provider}: HTTP {self.status} {self}"


class ProviderStreamBroken(Exception):
    """A streamed answer broke off (its message names how: ReadTimeout, RemoteProtocolError, ...)."""


class ProvidersFailed(Exception):
    """No provider could serve the call; `errors` says why for each one tried or skipped."""

    def __init__(self, attempts: Sequence[ProviderError], skipped: Sequence[str]) -> None:
        self.attempts = list(attempts)  # every failed attempt, retries included
        self.skipped = list(skipped)
        last_of = {attempt.provider: attempt for attempt in self.attempts}
        self.errors = list(last_of.values())  # each provider's last failure, in the order they were tried
        parts = [e.describe() for e in self.errors] + [f"{name}: circuit open, skipped" for name in self.skipped]
        super().__init__("; ".join(parts) or "no provider configured for this model")

    @property
    def timed_out(self) -> bool:
        return bool(self.errors) and all(e.timeout for e in self.errors)


class ProviderStream(Protocol):
    """A streamed answer, line by line; a connection that breaks mid-way raises ProviderStreamBroken."""

    def lines(self) -> AsyncIterator[str]: ...

    async def aclose(self) -> None: ...


class ProviderClient(Protocol):
    """One provider's chat completions endpoint. Failures are ProviderError."""

    name: str

    async def complete(self, payload: Mapping[str, Any]) -> tuple[dict[str, Any], bytes]:
        """The answer parsed (to read its usage) and as received (relayed to the caller as it is)."""
        ...

    async def open_stream(self, payload: Mapping[str, Any]) -> ProviderStream: ...

    async def aclose(self) -> None: ...


@dataclass
class ProviderCall:
    """The attempt that answered, and every attempt that failed before it."""

    provider: str
    upstream_model: str
    body: dict[str, Any] | None = None
    raw: bytes = b""
    stream: ProviderStream | None = None
    failed_attempts: list[ProviderError] = field(default_factory=list)

    def lines(self) -> AsyncIterator[str]:
        assert self.stream is not None
        return self.stream.lines()

    async def close(self) -> None:
        if self.stream is not None:
            await self.stream.aclose()


class ProviderRouter:
    """Tries the routes of a model in order, skipping providers without a key or with an open circuit."""

    def __init__(self, clients: Mapping[str, ProviderClient], breakers: Mapping[str, CircuitBreaker],
                 max_retries: int, retry_initial_s: float = 0.1, retry_max_s: float = 2.0) -> None:
        self.clients = dict(clients)
        self.breakers = dict(breakers)
        self.max_retries = max_retries
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s

    @staticmethod
    async def _attempt(client: ProviderClient, model: str, payload: Mapping[str, Any], stream: bool,
                       attempts: list[ProviderError]) -> ProviderCall:
        upstream_payload = {**payload, "model": model}
        try:
            if stream:
                return ProviderCall(client.name, model, stream=await client.open_stream(upstream_payload))
            body, raw = await client.complete(upstream_payload)
            return ProviderCall(client.name, model, body=body, raw=raw)
        except ProviderError as exc:
            exc.served_model = model
            attempts.append(exc)
            raise

    async def _with_retries(self, client: ProviderClient, model: str, payload: Mapping[str, Any], stream: bool,
                            attempts: list[ProviderError]) -> ProviderCall:
        """A plain loop on the hot path: almost every call succeeds on its first attempt, and then costs
        nothing more (a retry library's machinery costs CPU on every call)."""
        for retry in range(1, self.max_retries + 1):
            try:
                return await self._attempt(client, model, payload, stream, attempts)
            except ProviderError as exc:
                if not exc.retryable:
                    raise
            await asyncio.sleep(backoff_s(retry, self.retry_initial_s, self.retry_max_s, random.random()))
        return await self._attempt(client, model, payload, stream, attempts)

    async def call(self, routes: Sequence[ModelRoute], payload: Mapping[str, Any], stream: bool) -> ProviderCall:
        """The first provider that answers. Every failed attempt, retries included, is kept in
        `attempts` of the ProvidersFailed raised when none answers."""
        attempts: list[ProviderError] = []
        skipped: list[str] = []
        for route in routes:
            client = self.clients.get(route.provider)
            if client is None:
                continue
            breaker = self.breakers[route.provider]
            if not breaker.allow():
                skipped.append(route.provider)
                continue
            try:
                result = await self._with_retries(client, route.model, payload, stream, attempts)
            except ProviderError as exc:
                if exc.retryable:
                    breaker.record_failure()
                    log.warning("provider %s failed for %s: %s", route.provider, route.model, exc.describe())
                    continue
                breaker.record_success()  # the provider answered; the request was what it refused
                raise ProvidersFailed(attempts, skipped) from exc
            breaker.record_success()
            result.failed_attempts = attempts
            return result
        raise ProvidersFailed(attempts, skipped)

    async def aclose(self) -> None:
        for client in self.clients.values():
            await client.aclose()
