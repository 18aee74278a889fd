"""The provider client on a real local HTTP server: one client serves every caller, so a cookie that
a provider sets on one answer is never sent with another call; a stream arrives line by line however
the provider cuts its chunks; an error answer's message and a silent provider become ProviderErrors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from services.api.aiohttp_provider_client import AiohttpProviderClient
from services.api.providers import ProviderError, ProviderStreamBroken
from services.api.settings import ProviderEndpoint
from shared.policy import ProviderKind
from tests.servers import ThreadedHttpServer

ANSWER = {"id": "c", "object": "chat.completion", "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}
LONG_CONTENT = "x" * 300_000  # one SSE line longer than aiohttp's own readline accepts


def cookie_setting_provider(seen: list[str | None]) -> Starlette:
    async def completions(request: Request) -> JSONResponse:
        seen.append(request.headers.get("cookie"))
        response = JSONResponse(ANSWER)
        response.set_cookie("session", "caller-one", path="/")
        return response

    return Starlette(routes=[Route("/v1/chat/completions", completions, methods=["POST"])])


def client_of(server: ThreadedHttpServer, timeout_s: float = 5, kind: ProviderKind = "openai",
              base_path: str = "/v1", name: str = "together_ai", api_version: str | None = None
              ) -> AiohttpProviderClient:
    return AiohttpProviderClient(ProviderEndpoint(name, kind, f"{server.url}{base_path}", SecretStr("k"),
                                                  timeout_s=timeout_s, connect_timeout_s=2, max_retries=0,
                                                  api_version=api_version))


async def test_a_cookie_a_provider_sets_is_never_sent_back():
    seen: list[str | None] = []
    server = ThreadedHttpServer(cookie_setting_provider(seen)).start()
    client = client_of(server)
    try:
        for _ in range(3):
            body, _ = await client.complete("m", {"messages": []})
            assert body["usage"]["prompt_tokens"] == 1
        stream = await client.open_stream("m", {"messages": [], "stream": True})
        await stream.aclose()
    finally:
        await client.aclose()
        server.stop()
    assert seen == [None, None, None, None]


def provider_streaming(chunks: list[bytes], stall_s: float = 0) -> Starlette:
    async def completions(request: Request) -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            for chunk in chunks:
                yield chunk
                await asyncio.sleep(0.01)
            await asyncio.sleep(stall_s)

        return StreamingResponse(body(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/chat/completions", completions, methods=["POST"])])


async def lines_of(server: ThreadedHttpServer, timeout_s: float = 5) -> list[str]:
    client = client_of(server, timeout_s)
    try:
        stream = await client.open_stream("m", {"messages": [], "stream": True})
        try:
            return [line async for line in stream.lines()]
        finally:
            await stream.aclose()
    finally:
        await client.aclose()
        server.stop()


async def test_a_stream_arrives_line_by_line_however_its_chunks_are_cut():
    chunks = [b'data: {"a": 1}\r\n\r', b'\ndata: {"b":', b' 2}\n\n', f'data: "{LONG_CONTENT}"\n'.encode()[:100_000],
              f'data: "{LONG_CONTENT}"\n'.encode()[100_000:], b"\ndata: [DONE]"]
    lines = await lines_of(ThreadedHttpServer(provider_streaming(chunks)).start())
    assert lines == ['data: {"a": 1}', "", 'data: {"b": 2}', "", f'data: "{LONG_CONTENT}"', "", "data: [DONE]"]


async def test_a_stream_that_stalls_between_chunks_breaks_off_as_a_read_timeout():
    server = ThreadedHttpServer(provider_streaming([b'data: {"a": 1}\n\n'], stall_s=5)).start()
    with pytest.raises(ProviderStreamBroken, match="ReadTimeout"):
        await lines_of(server, timeout_s=0.5)


async def test_an_error_answer_is_raised_with_the_providers_message():
    async def completions(request: Request) -> JSONResponse:
        return JSONResponse({"error": {"message": "model overloaded", "type": "server_error"}}, status_code=503)

    server = ThreadedHttpServer(Starlette(routes=[Route("/v1/chat/completions", completions, methods=["POST"])])).start()
    client = client_of(server)
    try:
        with pytest.raises(ProviderError) as plain:
            await client.complete("m", {"messages": []})
        with pytest.raises(ProviderError) as streamed:
            await client.open_stream("m", {"messages": [], "stream": True})
    finally:
        await client.aclose()
        server.stop()
    for failure in (plain.value, streamed.value):
        assert (failure.status, str(failure), failure.retryable) == (503, "model overloaded", True)
