"""The floor for the gateway benchmark: the same three round trips as a gateway call, with nothing else.

A raw ASGI app under the same uvicorn settings as the api service. For each POST it asks the bare
nats-py echo (bench/nats_echo.py) once, relays the body to the upstream with the httpx API over the
same aiohttp transport as the gateway (httpx-aiohttp), publishes one
JetStream message with a Nats-Msg-Id and waits for its ack, and returns the upstream's answer. No
FastAPI, no validation, no callers, no limits: what is left of the gateway's added latency above this
floor is the gateway's own code.
"""

from __future__ import annotations

import os
import uuid

import httpx
import nats
from httpx_aiohttp import AiohttpTransport

STREAM, SUBJECT = "BENCH_FLOOR", "bench.floor.completed"


def create_app():
    upstream = os.environ["BENCH_UPSTREAM_URL"]
    state: dict = {}

    async def read_body(receive) -> bytes:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                return body

    async def app(scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    state["nc"] = nc = await nats.connect(os.environ["NATS_URL"])
                    state["js"] = js = nc.jetstream()
                    await js.add_stream(name=STREAM, subjects=[SUBJECT], max_msgs=100_000)
                    state["http"] = httpx.AsyncClient(timeout=30, transport=AiohttpTransport(
                        limits=httpx.Limits(max_connections=512, keepalive_expiry=2.0)))
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await state["http"].aclose()
                    await state["nc"].close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["path"] == "/health/live":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"{}"})
            return
        body = await read_body(receive)
        await state["nc"].request("bench.nats-echo", b'{"user_id":"bench"}', timeout=5)
        answer = await state["http"].post(upstream, content=body, headers={
            "content-type": "application/json", "authorization": "Bearer bench"})
        await state["js"].publish(SUBJECT, answer.content[:200], headers={"Nats-Msg-Id": uuid.uuid4().hex})
        await send({"type": "http.response.start", "status": answer.status_code,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": answer.content})

    return app
