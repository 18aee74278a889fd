"""LLM providers behind one interface: Together.ai first, OpenAI as fallback, each with timeouts,
bounded retries on 429/5xx (tenacity) and a circuit breaker.

Calls use the httpx API over aiohttp's connection pool and HTTP parser (`httpx-aiohttp`, the aiohttp
option of the official `openai` SDK): httpx's own transport costs several times the CPU per call."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport
from pydantic import SecretStr
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential, wait_random

from services.api.breaker import CircuitBreaker
from shared.settings import ModelRoute

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

    def __init__(self, errors: Sequence[ProviderError], skipped: Sequence[str],
                 attempts: Sequence[ProviderError] = ()) -> None:
        self.errors = list(errors)
        self.skipped = list(skipped)
        self.attempts = list(attempts)
        parts = [e.describe() for e in errors] + [f"{name}: circuit open, skipped" for name in skipped]
        super().__init__("; ".join(parts) or "no provider configured for this model")

    @property
    def timed_out(self) -> bool:
        return bool(self.errors) and all(e.timeout for e in self.errors)


def failure_of(provider: str, exc: Exception) -> ProviderError:
    """What a transport error means for the call: a timeout or not, and whether the provider had the
    request (`billable`). httpx-aiohttp re-raises aiohttp's errors as httpx ones, not always of the
    closest kind (a server that hangs up becomes a ConnectTimeout), so the aiohttp cause decides."""
    cause = exc.__cause__ if isinstance(exc.__cause__, aiohttp.ClientError) else exc
    name = type(cause).__name__
    if isinstance(cause, (aiohttp.ConnectionTimeoutError, httpx.ConnectTimeout, httpx.PoolTimeout)):
        return ProviderError(provider, "timed out", timeout=True)
    if isinstance(cause, (aiohttp.ClientConnectorError, httpx.ConnectError)):
        return ProviderError(provider, f"connection failed ({name})")
    if isinstance(cause, (TimeoutError, httpx.TimeoutException)):
        return ProviderError(provider, "timed out", timeout=True, billable=True)
    return ProviderError(provider, f"connection failed ({name})", billable=True)


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
        message = body.get("error", {}).get("message") if isinstance(body.get("error"), dict) else body.get("error")
        return str(message or response.reason_phrase)[:300]
    except (ValueError, AttributeError):
        return response.reason_phrase


class ProviderClient:
    """One provider's endpoint. `timeout_s` bounds a plain call as a whole, and a stream until its
    first byte and then each wait between two chunks; `connect_timeout_s` bounds the connection."""

    def __init__(self, name: str, base_url: str, api_key: SecretStr, timeout_s: float, connect_timeout_s: float
                 ) -> None:
        self.name = name
        self.timeout_s = timeout_s
        # An absolute URL parsed once: httpx would otherwise parse and join a relative one on every call.
        self.completions_url = httpx.URL(base_url.rstrip("/") + "/chat/completions")
        limits = httpx.Limits(max_connections=512, max_keepalive_connections=128, keepalive_expiry=15)
        self.http = httpx.AsyncClient(
            headers={"Authorization": f"Bearer {api_key.get_secret_value()}"},
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
            transport=AiohttpTransport(limits=limits),
        )

    async def _send(self, payload: Mapping[str, Any], stream: bool) -> httpx.Response:
        request = self.http.build_request("POST", self.completions_url, json=payload)
        try:
            async with asyncio.timeout(self.timeout_s):
                response = await self.http.send(request, stream=stream)
        except (httpx.TransportError, aiohttp.ClientError, TimeoutError) as exc:
            raise failure_of(self.name, exc) from exc
        if response.status_code >= 400:
            if stream:
                await response.aread()
                await response.aclose()
            raise ProviderError(self.name, _error_message(response), status=response.status_code)
        return response

    async def complete(self, payload: Mapping[str, Any]) -> tuple[dict[str, Any], bytes]:
        """The answer parsed (to read its usage) and as received (relayed to the caller as it is)."""
        response = await self._send(payload, stream=False)
        try:
            body = json.loads(response.content)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ProviderError(self.name, "answered with a body that is not JSON", status=502,
                                billable=True) from exc
        if not isinstance(body, dict):
            raise ProviderError(self.name, "answered with JSON that is not an object", status=502, billable=True)
        return body, response.content

    async def open_stream(self, payload: Mapping[str, Any]) -> httpx.Response:
        return await self._send(payload, stream=True)

    async def aclose(self) -> None:
        await self.http.aclose()


@dataclass
class ProviderCall:
    provider: str
    upstream_model: str
    body: dict[str, Any] | None = None
    raw: bytes = b""
    stream: httpx.Response | None = None
    attempts: list[ProviderError] = field(default_factory=list)

    async def lines(self) -> AsyncIterator[str]:
        """The lines of a streamed answer; a transport failure mid-way is a ProviderStreamBroken."""
        assert self.stream is not None
        try:
            async for line in self.stream.aiter_lines():
                yield line
        except (httpx.HTTPError, aiohttp.ClientError) as exc:
            raise ProviderStreamBroken(type(exc).__name__) from exc

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

    def _retrying(self) -> AsyncRetrying:
        return AsyncRetrying(
            stop=stop_after_attempt(self.max_retries + 1),
            wait=(wait_exponential(multiplier=self.retry_initial_s, max=self.retry_max_s)
                  + wait_random(0, self.retry_initial_s)),
            retry=retry_if_exception(lambda exc: isinstance(exc, ProviderError) and exc.retryable),
            reraise=True,
        )

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
            attempts.append(exc)
            raise

    async def call(self, routes: Sequence[ModelRoute], payload: Mapping[str, Any], stream: bool) -> ProviderCall:
        """The first provider that answers. Every failed attempt, retries included, is kept in
        `attempts` of the result or of the ProvidersFailed raised."""
        errors: list[ProviderError] = []
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
                result = await self._retrying()(self._attempt, client, route.model, payload, stream, attempts)
            except ProviderError as exc:
                errors.append(exc)
                if exc.retryable:
                    breaker.record_failure()
                    log.warning("provider %s failed for %s: %s", route.provider, route.model, exc.describe())
                    continue
                breaker.record_success()  # the provider answered; the request was what it refused
                raise ProvidersFailed(errors, skipped, attempts) from exc
            breaker.record_success()
            result.attempts = attempts
            return result
        raise ProvidersFailed(errors, skipped, attempts)

    async def aclose(self) -> None:
        for client in self.clients.values():
            await client.aclose()
