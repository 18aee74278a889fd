"""The provider client on a real local HTTP server: one client serves every caller, so a cookie that
a provider sets on one answer is never sent with another call."""

from __future__ import annotations

from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from services.api.httpx_provider_client import HttpxProviderClient
from tests.servers import ThreadedHttpServer

ANSWER = {"id": "c", "object": "chat.completion", "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}


def cookie_setting_provider(seen: list[str | None]) -> Starlette:
    async def completions(request: Request) -> JSONResponse:
        seen.append(request.headers.get("cookie"))
        response = JSONResponse(ANSWER)
        response.set_cookie("session", "caller-one", path="/")
        return response

    return Starlette(routes=[Route("/v1/chat/completions", completions, methods=["POST"])])


async def test_a_cookie_a_provider_sets_is_never_sent_back():
    seen: list[str | None] = []
    server = ThreadedHttpServer(cookie_setting_provider(seen)).start()
    client = HttpxProviderClient("together_ai", f"{server.url}/v1", SecretStr("k"), timeout_s=5, connect_timeout_s=2)
    try:
        for _ in range(3):
            body, _ = await client.complete({"model": "m", "messages": []})
            assert body["usage"]["prompt_tokens"] == 1
        stream = await client.open_stream({"model": "m", "messages": [], "stream": True})
        await stream.aclose()
    finally:
        await client.aclose()
        server.stop()
    assert seen == [None, None, None, None]
