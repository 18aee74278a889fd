"""Answer a request-reply subject directly on nats-py, for the gateway's hot path only.

Every call through the gateway waits for one `llm.request` round trip, and FastStream's per-message
pipeline is a large part of such a round trip (`python -m bench limiter` prints a bare FastStream
echo beside a nats-py one). So this one subscription is served on the broker's own connection, like
`shared.batch_consumer`, with the same rules as the FastStream subscribers:

- a queue group shares the requests among replicas; at most `max_in_flight` are handled at once;
- what cannot be parsed or validated gets a JSON error reply (the caller does not wait for a
  timeout) and a dead letter on `dlq.<subject>` with the reason;
- `stop()` stops taking requests and waits for the ones in flight.

A handler that raises sends no answer: the caller's timeout then applies its own failure mode, as it
would if no replica were running.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import nats.errors
from nats.aio.client import Client as Nats
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from prometheus_client import Histogram
from pydantic import BaseModel, ValidationError

from shared.bus import describe_invalid, malformed_json_reason, publish_dead_letter

log = logging.getLogger(__name__)

Req = TypeVar("Req", bound=BaseModel)

HANDLED_SECONDS = Histogram("costwarden_requests_handled_seconds", "Time to answer one request-reply message",
                            ["subject", "outcome"],
                            buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5))


class RequestResponder(Generic[Req]):
    def __init__(self, nc: Nats, js: JetStreamContext, *, subject: str, queue: str, model: type[Req],
                 handle: Callable[[Req], Awaitable[BaseModel]], service: str, max_in_flight: int = 64) -> None:
        self.nc = nc
        self.js = js
        self.subject = subject
        self.queue = queue
        self.model = model
        self.handle = handle
        self.service = service
        self._slots = asyncio.Semaphore(max_in_flight)
        self._in_flight: set[asyncio.Task[None]] = set()
        self._subscription: Subscription | None = None

    async def start(self) -> None:
        self._subscription = await self.nc.subscribe(self.subject, queue=self.queue, cb=self._on_message)

    async def stop(self) -> None:
        if self._subscription is not None:
            try:
                await self._subscription.drain()  # answers what was already delivered, then unsubscribes
            except nats.errors.Error:
                log.info("connection already closing; %s no longer subscribed", self.subject)
            self._subscription = None
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)

    async def _on_message(self, msg: Msg) -> None:
        await self._slots.acquire()
        task = asyncio.create_task(self._answer(msg))
        self._in_flight.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._slots.release()

    async def _answer(self, msg: Msg) -> None:
        started = time.perf_counter()
        outcome = "ok"
        try:
            try:
                request = self.model.model_validate_json(msg.data)
            except ValidationError as exc:
                outcome = "invalid"
                reason = malformed_json_reason(msg.data) or describe_invalid(exc)
                await self._reply(msg, json.dumps({"error": "invalid request", "reason": reason}).encode())
                await publish_dead_letter(self.js, self.subject, msg.data, reason, self.service)
                return
            answer = await self.handle(request)
            await self._reply(msg, answer.model_dump_json().encode())
        except Exception:
            outcome = "error"
            log.exception("could not answer a request on %s", self.subject)
        finally:
            HANDLED_SECONDS.labels(self.subject, outcome).observe(time.perf_counter() - started)

    async def _reply(self, msg: Msg, body: bytes) -> None:
        if msg.reply:
            await self.nc.publish(msg.reply, body)
