"""The floors for the gateway benchmark: the same three round trips as a gateway call, with nothing else.

For each POST a relay asks NATS once, relays the body to the upstream over aiohttp's client, as the
gateway does, publishes one JetStream message with a Nats-Msg-Id and waits for its ack, and returns
the upstream's answer. No validation, no callers, no token counting, no events of ours. Four relays,
each adding one thing the gateway has, so that the benchmark shows what each costs:

- `create_app`: a raw ASGI app whose question goes to a bare nats-py echo (bench/nats_echo.py): the
  floor of issue 11's targets;
- `create_app` with `BENCH_ASKS=redis`: the question is answered after one run of the limiter's
  decision script on Redis by a bare nats-py responder (bench/nats_echo.py): the least a limiter that
  keeps exact counts in Redis costs, with none of our code around it;
- `create_app` with `BENCH_ASKS=limiter`: the question is a real `llm.request`, answered by the real
  limiter;
- `create_fastapi_app` (with `BENCH_ASKS=limiter`): the same as one FastAPI route, as the gateway's are.

Each runs under the same uvicorn and garbage-collector settings as the api service. What is left above
the last one is the gateway's own code.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import nats
from fastapi import FastAPI, Request
from fastapi.responses import Response
from nats.aio.client import Client as Nats
from nats.js import JetStreamContext

from shared.service_app import settle_heap

STREAM, SUBJECT = "BENCH_FLOOR", "bench.floor.completed"
# A limiter question as the gateway asks it, written out: the relay runs none of our code per call.
LIMIT_REQUEST = ('{"schema_version":1,"id":"%(id)s","occurred_at":"2026-01-01T00:00:00Z","request_id":"%(id)s",'
                 '"user_id":"bench-relay","client_ip":"127.0.0.1","tier":"enterprise",'
                 '"endpoint":"/v1/chat/completions","policy":"standard","model":"meta-llama/Llama-3-8b-chat-hf",'
                 '"prompt_tokens_estimate":9,"max_tokens":8}')
# BENCH_ASKS -> the subject a relay asks its question on
QUESTIONS = {"echo": "bench.nats-echo", "redis": "bench.redis-decide", "limiter": "llm.request"}


@dataclass
class Relay:
    nc: Nats
    js: JetStreamContext
    http: aiohttp.ClientSession
    upstream: str
    subject: str

    async def __call__(self, body: bytes) -> tuple[int, bytes]:
        await self.nc.request(self.subject, (LIMIT_REQUEST % {"id": uuid.uuid4().hex}).encode(), timeout=5)
        async with self.http.post(self.upstream, data=body, headers={
                "content-type": "application/json", "authorization": "Bearer bench"}) as answer:
            status, content = answer.status, await answer.read()
        await self.js.publish(SUBJECT, content[:200], headers={"Nats-Msg-Id": uuid.uuid4().hex})
        return status, content


@asynccontextmanager
async def relay() -> AsyncIterator[Relay]:
    nc = await nats.connect(os.environ["NATS_URL"])
    js = nc.jetstream()
    await js.add_stream(name=STREAM, subjects=[SUBJECT], max_msgs=100_000)
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=512, keepalive_timeout=2.0),
                                 cookie_jar=aiohttp.DummyCookieJar(), timeout=aiohttp.ClientTimeout(total=30))
    settle_heap()
    try:
        yield Relay(nc, js, http, os.environ["BENCH_UPSTREAM_URL"],
                    QUESTIONS[os.environ.get("BENCH_ASKS", "echo")])
    finally:
        await http.close()
        await nc.close()


def create_app() -> Any:
    state: dict[str, Relay] = {}
    resources = relay()

    async def read_body(receive: Any) -> bytes:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                return body

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    state["relay"] = await resources.__aenter__()
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await resources.__aexit__(None, None, None)
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["path"] == "/health/live":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"{}"})
            return
        status, content = await state["relay"](await read_body(receive))
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": content})

    return app


def create_fastapi_app() -> Any:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with relay() as app.state.relay:
            yield

    app = FastAPI(lifespan=lifespan)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        status, content = await request.app.state.relay(await request.body())
        return Response(content, status_code=status, media_type="application/json")

    @app.get("/health/live")
    async def live() -> dict[str, str]:
        return {"status": "alive"}

    return app
