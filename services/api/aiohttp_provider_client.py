"""A provider's endpoints over aiohttp's connection pool and HTTP parser, in the provider's own wire
format: an OpenAI-compatible server (`/chat/completions`, `/embeddings`, a bearer key), Azure OpenAI
(`/openai/deployments/{deployment}/...?api-version=`, an `api-key` header) or Anthropic's Messages API
(`/v1/messages`, `x-api-key`, translated by anthropic_messages.py). Provider calls are the gateway's
hottest path, and httpx, on its own transport or on top of aiohttp's (httpx-aiohttp), costs far more
CPU per call (docs/benchmarks-history.md). Transport failures become the router's ProviderError."""

from __future__ import annotations

import asyncio
import email.utils
import json
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import quote

import aiohttp
import certifi

from services.api.anthropic_messages import (
    AnthropicStreamError,
    StreamTranslator,
    UnsupportedRequest,
    chat_completion,
    messages_request,
)
from services.api.providers import ProviderError, ProviderStreamBroken
from services.api.settings import ProviderEndpoint
from shared.policy import ANTHROPIC_VERSION

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
    """The message of a provider's error answer (OpenAI's and Anthropic's {"error": {"message"}}, or
    {"error": "..."})."""
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError):
        return reason
    message = error.get("message") if isinstance(error, dict) else error
    return str(message or reason)[:300]


def retry_after_s(value: str | None) -> float | None:
    """A Retry-After header in seconds (it may be a number of seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class AiohttpProviderStream:
    """A streamed answer, line by line (Server-Sent Events end lines with LF or CRLF). Lines are split
    here rather than by aiohttp's readline, which refuses a line longer than its buffer."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response

    async def raw_lines(self) -> AsyncIterator[str]:
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

    def lines(self) -> AsyncIterator[str]:
        return self.raw_lines()

    async def aclose(self) -> None:
        """Back to the pool when read to its end; a connection left mid-answer is closed instead."""
        self.response.release()


class AnthropicProviderStream(AiohttpProviderStream):
    """Anthropic's event stream, as OpenAI's chunks."""

    async def lines(self) -> AsyncIterator[str]:  # type: ignore[override]
        translator = StreamTranslator()
        async for line in self.raw_lines():
            try:
                for translated in translator.lines(line):
                    yield translated
            except AnthropicStreamError as exc:
                raise ProviderStreamBroken(f"error event ({exc})") from exc


class AiohttpProviderClient:
    """One provider's endpoints. `timeout_s` bounds a plain call as a whole, and a stream until its
    first byte and then each wait between two chunks; `connect_timeout_s` bounds the connection.

    The session is made on first use, inside the running event loop as aiohttp requires. It keeps no
    cookies: one client serves every caller, and a cookie kept from one caller's answer would be sent
    with the next caller's call."""

    def __init__(self, endpoint: ProviderEndpoint) -> None:
        self.name = endpoint.name
        self.kind = endpoint.kind
        self.timeout_s = endpoint.timeout_s
        base = endpoint.base_url.rstrip("/")
        self.base_url = base
        self.api_version = endpoint.api_version
        self.completions_url = base + ("/v1/messages" if self.kind == "anthropic" else "/chat/completions")
        self.embeddings_url = base + "/embeddings"
        self._headers = self._auth_headers(endpoint)
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=endpoint.connect_timeout_s,
                                              sock_read=endpoint.timeout_s)
        self._session: aiohttp.ClientSession | None = None

    def _auth_headers(self, endpoint: ProviderEndpoint) -> dict[str, str]:
        key = endpoint.api_key.get_secret_value() if endpoint.api_key is not None else None
        if self.kind == "anthropic":
            return {"anthropic-version": ANTHROPIC_VERSION, **({"x-api-key": key} if key else {})}
        if self.kind == "azure":
            return {"api-key": key} if key else {}
        return {"Authorization": f"Bearer {key}"} if key else {}

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=MAX_CONNECTIONS, keepalive_timeout=KEEPALIVE_S,
                                             ssl=ssl.create_default_context(cafile=certifi.where()))
            self._session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(),
                                                  headers=self._headers, timeout=self._timeout)
        return self._session

    def _request(self, operation: str, model: str, payload: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]]:
        """Where a call goes and what it sends, in this provider's wire format."""
        if self.kind == "openai":
            return self.completions_url if operation == "chat" else self.embeddings_url, {**payload, "model": model}
        if self.kind == "azure":
            path = "chat/completions" if operation == "chat" else "embeddings"
            url = f"{self.base_url}/openai/deployments/{quote(model, safe='')}/{path}?api-version={self.api_version}"
            return url, {key: value for key, value in payload.items() if key != "model"}
        if operation != "chat":
            raise ProviderError(self.name, "an anthropic provider serves no embeddings", status=400)
        try:
            return self.completions_url, messages_request(payload, model)
        except UnsupportedRequest as exc:
            raise ProviderError(self.name, str(exc), status=400) from None

    async def _send(self, url: str, body: Mapping[str, Any], stream: bool) -> tuple[aiohttp.ClientResponse, bytes]:
        """The answer, its body read unless it is a stream, all within `timeout_s`; a provider's error
        answer is raised with its message (and its Retry-After), a transport failure as what it means for
        the call."""
        try:
            async with asyncio.timeout(self.timeout_s):
                response = await self.session.post(url, json=body)
                if stream and response.status < 400:
                    return response, b""
                try:
                    raw = await response.read()
                finally:
                    response.release()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise failure_of(self.name, exc) from exc
        if response.status >= 400:
            raise ProviderError(self.name, error_message(raw, response.reason or ""), status=response.status,
                                retry_after_s=retry_after_s(response.headers.get("retry-after")))
        return response, raw

    def _parsed(self, raw: bytes) -> tuple[dict[str, Any], bytes]:
        """The answer parsed (to read its usage) and as relayed (Anthropic's: as OpenAI's)."""
        try:
            answer = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ProviderError(self.name, "answered with a body that is not JSON", status=502,
                                billable=True) from exc
        if not isinstance(answer, dict):
            raise ProviderError(self.name, "answered with JSON that is not an object", status=502, billable=True)
        if self.kind == "anthropic":
            answer = chat_completion(answer)
            raw = json.dumps(answer, separators=(",", ":")).encode()
        return answer, raw

    async def complete(self, model: str, payload: Mapping[str, Any]) -> tuple[dict[str, Any], bytes]:
        """The answer parsed (to read its usage) and as relayed to the caller."""
        url, body = self._request("chat", model, payload)
        return self._parsed((await self._send(url, body, stream=False))[1])

    async def embed(self, model: str, payload: Mapping[str, Any]) -> tuple[dict[str, Any], bytes]:
        url, body = self._request("embeddings", model, payload)
        return self._parsed((await self._send(url, body, stream=False))[1])

    async def open_stream(self, model: str, payload: Mapping[str, Any]) -> AiohttpProviderStream:
        url, body = self._request("chat", model, payload)
        response, _ = await self._send(url, body, stream=True)
        return AnthropicProviderStream(response) if self.kind == "anthropic" else AiohttpProviderStream(response)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
