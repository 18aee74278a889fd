"""The floor for the limiter benchmark: a request-reply echo on nats-py alone, no framework."""

import asyncio
import sys

import nats


async def main(nats_url: str) -> None:
    nc = await nats.connect(nats_url)

    async def echo(msg) -> None:
        await msg.respond(msg.data)

    await nc.subscribe("bench.nats-echo", queue="bench-nats-echo", cb=echo)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
