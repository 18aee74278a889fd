from __future__ import annotations

import json

import asyncpg
import httpx
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from services.api.pg_key_admin import create_key

CHEAP_MODEL = "meta-llama/Llama-3-8b-chat-hf"


def chat_body(model: str = CHEAP_MODEL, max_tokens: int = 8, **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "Say hello"}], "max_tokens": max_tokens,
            **extra}


async def new_key(database_url: str, user: str, tier: str, admin: bool = False) -> str:
    conn = await asyncpg.connect(database_url)
    try:
        return (await create_key(conn, user, tier, actor="test", is_admin=admin))[1]
    finally:
        await conn.close()


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def from_ip(ip: str) -> dict[str, str]:
    return {"X-Forwarded-For": ip}


async def stream_messages(js: JetStreamContext, stream: str, subject: str) -> list[dict]:
    """Every message currently in a stream on one subject, read by a throw-away consumer."""
    info = await js.stream_info(stream)
    total = info.state.messages
    if total == 0:
        return []
    sub = await js.pull_subscribe(subject, stream=stream, config=ConsumerConfig(
        ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL, inactive_threshold=30))
    out: list[dict] = []
    try:
        while True:
            try:
                batch = await sub.fetch(1000, timeout=0.5)
            except Exception:
                break
            for message in batch:
                try:
                    out.append(json.loads(message.data))
                except ValueError:
                    continue  # tests publish malformed events on purpose
    finally:
        await sub.unsubscribe()
    return out


async def post(client: httpx.AsyncClient, path: str, body: dict, headers: dict | None = None) -> httpx.Response:
    return await client.post(path, json=body, headers=headers or {})
