from __future__ import annotations

import json
import time

import asyncpg
import httpx
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from redis.asyncio import Redis

from services.keys.pg_key_admin import create_key
from tests.support.polling import eventually

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


async def settled_counters(redis_url: str, user: str) -> tuple[int, int]:
    """(tokens in the current minutes, nano-USD today) of a caller, once no reservation of it is open.
    The layout is the limiter's (redis_limiter_store.py): per-minute and per-day counters are hash fields."""
    redis = Redis.from_url(redis_url)
    try:
        base = "cw:{user:" + user + "}"
        settled = await eventually(lambda: _none_open(redis, base), 15)
        assert settled, "a reservation was never settled"
        tokens = sum(int(v) for v in (await redis.hgetall(f"{base}:tok")).values())
        day = int(time.time() * 1000) // 86_400_000
        return tokens, int(await redis.hget(f"{base}:usd", str(day)) or 0)
    finally:
        await redis.aclose()


async def _none_open(redis: Redis, base: str) -> bool:
    return not await redis.keys(f"{base}:resv:*")
