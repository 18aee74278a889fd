"""Drain a durable JetStream pull consumer in batches: parse, store the batch, then ack.

Used where one database or Redis round trip per batch matters (the ledger, violations,
settlements). FastStream's own batch pull subscriber was reported unreliable (faststream #2219),
so this drives nats-py's pull subscription directly on the broker's connection.

Delivery rules: a message is acked only after `store` returned for its batch; if `store` raises,
every message of the batch is nak'ed with a growing delay and will come again (so `store` must be
idempotent on the event id). What cannot be parsed goes to `dlq.<subject>` and is acked.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from pydantic import BaseModel, ValidationError

from shared.backoff import backoff_s
from shared.bus import describe_invalid, malformed_json_reason, publish_dead_letter
from shared.subjects import stream_of, with_jetstream_patience

log = logging.getLogger(__name__)

FIRST_BACKOFF_S = 1.0  # a batch that failed comes back after this, doubling with each failure in a row
MAX_BACKOFF_S = 15.0  # up to this

E = TypeVar("E", bound=BaseModel)

# After a linger, what has arrived is already at the client or answers a no-wait pull at once;
# this only bounds the wait when nothing has.
LINGER_COLLECT_TIMEOUT_S = 0.05


class BatchConsumer(Generic[E]):
    def __init__(
        self,
        js: JetStreamContext,
        *,
        subject: str,
        durable: str,
        model: type[E],
        store: Callable[[Sequence[E]], Awaitable[object]],
        service: str,
        batch_size: int = 500,
        fetch_timeout_s: float = 1.0,
        ack_wait_s: float = 30.0,
        max_backoff_s: float = MAX_BACKOFF_S,
        linger_s: float = 0.0,
    ) -> None:
        self.js = js
        self.stream = stream_of(subject)
        self.subject = subject
        self.durable = durable
        self.model = model
        self.store = store
        self.service = service
        self.batch_size = batch_size
        self.fetch_timeout_s = fetch_timeout_s
        self.ack_wait_s = ack_wait_s
        self.max_backoff_s = max_backoff_s
        self.linger_s = linger_s
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.failures_in_a_row = 0

    async def start(self, patience_s: float = 60.0) -> None:
        """Bind to the durable consumer, creating it the first time. A cluster electing leaders (a node
        just lost) may not answer the creation for a while: it is asked again, with the same config, for
        up to `patience_s` (creating an existing durable with the same config changes nothing)."""
        config = ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL,
                                ack_wait=self.ack_wait_s, max_ack_pending=max(10_000, self.batch_size * 4))
        sub = await with_jetstream_patience(
            lambda: self.js.pull_subscribe(self.subject, durable=self.durable, stream=self.stream, config=config),
            patience_s)
        self._subscription = sub
        self._task = asyncio.create_task(self._run(sub), name=f"batch-consumer-{self.durable}")

    async def stop(self) -> None:
        """Finish the batch in hand, then stop fetching."""
        self._stopping.set()
        if self._task is not None:
            await self._task
            await self._subscription.unsubscribe()

    async def _run(self, sub: JetStreamContext.PullSubscription) -> None:
        """Fetch the next batch while the current one is being stored, so that the bus and the
        store work at the same time."""
        next_batch = asyncio.create_task(self._fetch(sub))
        while True:
            messages = await next_batch
            if self._stopping.is_set():
                for msg in messages:
                    await msg.nak()  # not ours to finish: let another replica have them at once
                return
            next_batch = asyncio.create_task(self._fetch(sub))
            if messages:
                await self._handle(messages)

    async def _fetch(self, sub: JetStreamContext.PullSubscription) -> list[Msg]:
        """One batch. With `linger_s`, a batch that is not full waits that long after its first message
        and then takes everything that arrived meanwhile, so that a burst is handled together (the
        notifier's digests) with one pull request per batch rather than one per message."""
        if self._stopping.is_set():
            return []
        messages = await self._fetch_some(sub, self.batch_size, self.fetch_timeout_s)
        if messages and self.linger_s > 0 and len(messages) < self.batch_size:
            await self._sleep(self.linger_s)
            messages += await self._fetch_some(sub, self.batch_size - len(messages), LINGER_COLLECT_TIMEOUT_S)
        return messages

    async def _fetch_some(self, sub: JetStreamContext.PullSubscription, n: int, timeout_s: float) -> list[Msg]:
        try:
            return await sub.fetch(n, timeout=timeout_s)
        except (TimeoutError, NatsTimeoutError):
            return []
        except Exception:
            log.exception("fetch from %s failed; retrying", self.durable)
            await self._sleep(1.0)
            return []

    async def _handle(self, messages: list[Msg]) -> None:
        events: list[E] = []
        accepted: list[Msg] = []
        for msg in messages:
            try:
                events.append(self.model.model_validate_json(msg.data))
                accepted.append(msg)
            except ValidationError as exc:
                reason = malformed_json_reason(msg.data) or describe_invalid(exc)
                await publish_dead_letter(self.js, msg.subject, msg.data, reason, self.service)
                await msg.ack()
        if not events:
            return
        heartbeat = asyncio.create_task(self._keep_in_progress(accepted))
        try:
            await self.store(events)
        except Exception as exc:
            self.failures_in_a_row += 1
            delay = backoff_s(self.failures_in_a_row, FIRST_BACKOFF_S, self.max_backoff_s)
            log.warning("storing %d events from %s failed (%s); redelivery in %.1fs",
                        len(events), self.durable, type(exc).__name__, delay)
            for msg in accepted:
                await msg.nak(delay=delay)
            await self._sleep(delay)
            return
        finally:
            heartbeat.cancel()
        self.failures_in_a_row = 0
        for msg in accepted:
            await msg.ack()

    async def _keep_in_progress(self, messages: list[Msg]) -> None:
        """While a batch is being stored, tell the server it is still being worked on, so that a slow
        store is not redelivered elsewhere, while a dead consumer's batch is, after one ack wait."""
        while True:
            await asyncio.sleep(self.ack_wait_s / 3)
            for msg in messages:
                await msg.in_progress()

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            pass
