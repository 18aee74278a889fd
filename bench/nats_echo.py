"""The floors' responders, on nats-py alone (no framework) and on uvloop, as the services run:

- `bench.nats-echo` answers with what it received: the floor of the limiter benchmark, and the bare
  relay's question;
- `bench.redis-decide` (given a Redis URL) answers once the limiter's own decision script has run on
  Redis for the question, with fixed limits that never deny: what any limiter keeping exact shared
  counts in Redis does per question, with none of our code around it.
"""

import asyncio
import sys
import uuid

import nats
import uvloop
from redis.asyncio import Redis

from services.limiter.redis_limiter_store import DECIDE, caller_keys

ALLOWED = b'{"allowed":true}'
# The script's ARGV after the request id: requests and window (ms), strict limit (0: off), tokens per
# minute and reserved, budget and reserved (nano-USD), reservation TTL (s).
NEVER_DENY = [10**9, 3_600_000, 0, 10**12, 17, 10**18, 3_400, 900]


async def main(nats_url: str, redis_url: str | None) -> None:
    nc = await nats.connect(nats_url)

    async def echo(msg) -> None:
        await msg.respond(msg.data)

    await nc.subscribe("bench.nats-echo", queue="bench-nats-echo", cb=echo)
    if redis_url:
        decide = Redis.from_url(redis_url, max_connections=128).register_script(DECIDE)
        answering: set[asyncio.Task] = set()

        async def answer(msg) -> None:
            request_id = uuid.uuid4().hex
            await decide(keys=list(caller_keys("cw:{user:bench-floor}", request_id).values()),
                         args=[request_id, *NEVER_DENY])
            await msg.respond(ALLOWED)

        async def on_question(msg) -> None:  # answered concurrently, as the limiter does
            task = asyncio.create_task(answer(msg))
            answering.add(task)
            task.add_done_callback(answering.discard)

        await nc.subscribe("bench.redis-decide", queue="bench-redis-decide", cb=on_question)
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None))
