"""What the service tests of the notifier, the cost service and the backup worker share: several service
processes started, or stopped, at the same time rather than one after another (a start is mostly a fresh
interpreter importing the service, a stop a graceful shutdown, so side by side they take about the time
of one), and whether a durable consumer is done with everything on its stream."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping

from nats.js import JetStreamContext

from tests import servers
from tests.conftest import start_services
from tests.servers import ServiceProcess


async def start_all(name: str, port_var: str, envs: Iterable[Mapping[str, str]]) -> list[ServiceProcess]:
    """One `name` process per env, started at once (tests/conftest.start_services) on a thread, so that the
    test's event loop goes on meanwhile (publishing, say)."""
    return await asyncio.to_thread(start_services, *[(name, dict(env), port_var) for env in envs])


async def stop_all(services: Iterable[ServiceProcess]) -> None:
    await asyncio.to_thread(servers.stop_all, list(services))


async def all_acked(js: JetStreamContext, stream: str, durable: str) -> bool:
    """Every message published to `stream` so far has reached the durable consumer and been acked (a
    message nak'ed for later still counts as pending an ack): nothing of it can come again."""
    last = (await js.stream_info(stream)).state.last_seq
    info = await js.consumer_info(stream, durable)
    return info.delivered.stream_seq >= last and info.num_pending == 0 and info.num_ack_pending == 0
