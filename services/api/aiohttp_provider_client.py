"""A provider's chat completions endpoint over aiohttp's connection pool and HTTP parser. Provider calls
are the gateway's hottest path, and httpx, on its own transport or on top of aiohttp's
(httpx-aiohttp), costs far more CPU per call (docs/benchmarks-history.md). Transport failures become
the router's ProviderError."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import certifi
from pydantic import SecretStr

from services.api.providers import ProviderError, ProviderStreamBroken

MAX_CONNECTIONS = 512
KEEPALIVE_S = 15.0
READ_CHUNK_BYTES = 2**16


def failure_of(provider: str, exc: Exception) -> ProviderError:
    """What a transport error means for the call: a timeout or not, and whether the provider had the
    request (`billable`: it may have worked on it, and providers bill such attempts)."""
    name = type(exc).__name__
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return ProviderError(provider, "timed out", timeout=True)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return ProviderError(provider, f"connection failed ({name})")
    if isinstance(exc, TimeoutError):
        return ProviderError(provider, "timed out", timeout=True, billable=True)
    return ProviderError(provider, f"connection failed ({name})", billable=True)


def error_message(body: bytes, reason: str) -> str:
    """The message of a provider's error answer (OpenAI's {"error": {"message"}} or {"error": "..."})."""
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError):
        return reason
    message = error.get("message") if isinstance(error, dict) else error
    return str(message or reason)[:300]


class AiohttpProviderStream:
    """A streamed answer, line by line (Server-Sent Events end lines with LF or CRLF). Lines are split
    here rather than by aiohttp's readline, which refuses a line longer than its buffer."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response

    async def lines(self) -> AsyncIterator[str]:
        pending = b""
        try:
            async for chunk in self.response.content.iter_chunked(READ_CHUNK_BYTES):
                *complete, pending = (pending + chunk).split(b"\n")
                for line in complete:
                    yield line.rstrip(b"\r").decode()
        except TimeoutError as exc:
            raise ProviderStreamBroken("ReadTimeout") from exc
        except aiohttp.ClientError as exc:
            raise ProviderStreamBroken(type(exc).__name__) from exc
        if pending:
            yield pending.rstrip(b"\r").decode()

    async def aclose(self) -> None:
        """Back to the pool when read to its end; a connection left mid-answer is closed instead."""
        self.response.release()


class AiohttpProviderClient:
    """One provider's endpoint. `timeout_s` bounds a plain call as a whole, and a stream until its
    first byte and then each wait between two chunks; `connect_timeout_s` bounds the connection.

    The session is made on first use, inside the running event loop as aiohttp requires. It keeps no
    cookies: one client serves every caller, and a cookie kept from one caller's answer would be sent
    with the next caller's call."""

    def __init__(self, name: str, base_url: str, api_key: SecretStr, timeout_s: float, connect_timeout_s: float
                 ) -> None:
        self.name = name
        self.timeout_s = timeout_s
        self.completions_url = base_url.rstrip("/") + "/chat/completions"
        self._headers = {"Authorization": f"Bearer {api_key.get_secret_value()}"}
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout_s, sock_read=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=MAX_CONNECTIONS, keepalive_timeout=KEEPALIVE_S,
                                             ssl=ssl.create_default_context(cafile=certifi.where()))
            self._session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(),
                                                  headers=self._headers, timeout=self._timeout)
        return self._session

    async def _send(self, payload: Mapping[str, Any], stream: bool) -> tuple[aiohttp.ClientResponse, bytes]:
        """The answer, its body read unless it is a stream, all within `timeout_s`; a provider's error
        answer is raised with its message, a transport failure as what it means for the call."""
        try:
            async with asyncio.timeout(self.timeout_s):
                response = await self.session.post(self.completions_url, json=payload)
                if stream and response.status < 400:
                    return response, b""
                try:
                    body = await response.read()
                finally:
                    response.release()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise failure_of(self.name, exc) from exc
        if response.status >= 400:
            raise ProviderError(self.name, error_message(body, response.reason or ""), status=response.status)
        return response, body

    async def complete(self, payload: Mapping[str, Any]) -> tuple[dict[str, Any], bytes]:
        """The answer parsed (to read its usage) and as received (relayed to the caller as it is)."""
        _, raw = await self._send(payload, stream=False)
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ProviderError(self.name, "answered with a body that is not JSON", status=502,
                                billable=True) from exc
        if not isinstance(body, dict):
            raise ProviderError(self.name, "answered with JSON that is not an object", status=502, billable=True)
        return body, raw

    async def open_stream(self, payload: Mapping[str, Any]) -> AiohttpProviderStream:
        response, _ = await self._send(payload, stream=True)
        return AiohttpProviderStream(response)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
