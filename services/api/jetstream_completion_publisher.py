"""`llm.completed` to JetStream, with a bounded backlog for while NATS is away."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from functools import partial

import nats.errors
from nats.aio.client import Client as Nats
from nats.js import JetStreamContext
from prometheus_client import Counter, Gauge

from shared.backoff import retrying
from shared.bus import publish_event
from shared.events import LlmCompleted
from shared.subjects import LLM_COMPLETED

log = logging.getLogger(__name__)

UNPUBLISHED = Counter("costwarden_api_unpublished_events_total",
                      "llm.completed events lost: the backlog was full, or NATS did not take them before shutdown")
BACKLOG = Gauge("costwarden_api_unpublished_backlog", "llm.completed events waiting for NATS to take them",
                multiprocess_mode="livesum")
PUBLISH_ERRORS = (nats.errors.Error, TimeoutError)


class JetStreamCompletionPublisher:
    """Publishes `llm.completed` to JetStream with the request id as Nats-Msg-Id, so that the stream
    holds one record per request however often a publish is retried.

    While NATS takes events, the caller waits for the ack: an answered call is a recorded call. When a
    publish fails or NATS is away, the event joins a bounded backlog that one background task retries,
    oldest first, until JetStream takes it. An outage then neither adds the ack timeout to every call
    nor loses what was served; only a backlog over `backlog_limit` events (or one still unsent when the
    process exits) is lost, and counted."""

    def __init__(self, nc: Nats, js: JetStreamContext, *, ack_timeout_s: float = 2.0,
                 backlog_limit: int = 100_000) -> None:
        self.nc = nc
        self.js = js
        self.ack_timeout_s = ack_timeout_s
        self.backlog_limit = backlog_limit
        self.backlog: deque[LlmCompleted] = deque()
        self._retrier: asyncio.Task[None] | None = None

    async def publish(self, event: LlmCompleted) -> None:
        if self.nc.is_connected and not self.backlog:
            try:
                await self._publish_once(event)
                return
            except PUBLISH_ERRORS as exc:
                log.warning("llm.completed for %s not acked (%s); keeping it to retry", event.request_id,
                            type(exc).__name__)
        self._keep(event)

    async def _publish_once(self, event: LlmCompleted) -> None:
        await publish_event(self.js, LLM_COMPLETED, event, event.request_id, self.ack_timeout_s)

    def _keep(self, event: LlmCompleted) -> None:
        if len(self.backlog) >= self.backlog_limit:
            UNPUBLISHED.inc()
            log.error("backlog of %d unpublished events is full; llm.completed for %s is lost",
                      len(self.backlog), event.request_id)
            return
        self.backlog.append(event)
        BACKLOG.set(len(self.backlog))
        if self._retrier is None or self._retrier.done():
            self._retrier = asyncio.create_task(self._retry_backlog(), name="llm-completed-backlog")

    async def _retry_backlog(self) -> None:
        while self.backlog:
            await retrying(partial(self._publish_once, self.backlog[0]), PUBLISH_ERRORS, initial_s=0.2, max_s=5.0)
            self.backlog.popleft()
            BACKLOG.set(len(self.backlog))
        log.info("backlog of unpublished llm.completed events cleared")

    async def drain(self, timeout_s: float) -> None:
        """At shutdown: give the backlog up to `timeout_s` to reach JetStream, then count what is left."""
        if self._retrier is None or self._retrier.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._retrier), timeout_s)
        except TimeoutError:
            self._retrier.cancel()
            UNPUBLISHED.inc(len(self.backlog))
            log.error("%d llm.completed events were never published: NATS did not take them before shutdown",
                      len(self.backlog))
