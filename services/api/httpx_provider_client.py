"""A provider's chat completions endpoint over the httpx API on aiohttp's connection pool and HTTP
parser (`httpx-aiohttp`, the aiohttp option of the official `openai` SDK): httpx's own transport costs
several times the CPU per call. Transport failures become the router's ProviderError."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport
from pydantic import SecretStr

from services.api.providers import ProviderError, ProviderStreamBroken


class NoCookies(httpx.Cookies):
    """Never keeps a cookie a provider sets: one client serves every caller, and a cookie kept from one
    caller's answer would be sent with the next caller's call. (httpx and aiohttp each keep cookies by
    default; both are turned off, which also spares parsing them on every answer.)"""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


class CookielessClient(httpx.AsyncClient):
    _no_cookies = NoCookies()

    @property
    def cookies(self) -> httpx.Cookies:
        return self._no_cookies

    @cookies.setter
    def cookies(self, cookies: Any) -> None:
        raise TypeError("a provider client keeps no cookies")


def aiohttp_session(max_connections: int, keepalive_s: float) -> aiohttp.ClientSession:
    """The transport's pool: made on first use, inside the running event loop, as aiohttp requires."""
    connector = aiohttp.TCPConnector(limit=max_connections, keepalive_timeout=keepalive_s,
                                     ssl=httpx.create_ssl_context())
    return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())


class HttpxProviderStream:
    def __init__(self, response: httpx.Response) -> None:
        self.response = response

    async def lines(self) -> AsyncIterator[str]:
        try:
            async for line in self.response.aiter_lines():
                yield line
        except (httpx.HTTPError, aiohttp.ClientError) as exc:
            raise ProviderStreamBroken(type(exc).__name__) from exc

    async def aclose(self) -> None:
        await self.response.aclose()


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


MAX_CONNECTIONS = 512
KEEPALIVE_S = 15.0


class HttpxProviderClient:
    """One provider's endpoint. `timeout_s` bounds a plain call as a whole, and a stream until its
    first byte and then each wait between two chunks; `connect_timeout_s` bounds the connection."""

    def __init__(self, name: str, base_url: str, api_key: SecretStr, timeout_s: float, connect_timeout_s: float
                 ) -> None:
        self.name = name
        self.timeout_s = timeout_s
        # An absolute URL parsed once: httpx would otherwise parse and join a relative one on every call.
        self.completions_url = httpx.URL(base_url.rstrip("/") + "/chat/completions")
        self.http = CookielessClient(
            headers={"Authorization": f"Bearer {api_key.get_secret_value()}"},
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
            transport=AiohttpTransport(client=lambda: aiohttp_session(MAX_CONNECTIONS, KEEPALIVE_S)),
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

    async def open_stream(self, payload: Mapping[str, Any]) -> HttpxProviderStream:
        return HttpxProviderStream(await self._send(payload, stream=True))

    async def aclose(self) -> None:
        await self.http.aclose()


