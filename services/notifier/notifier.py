"""The notifier use case: route each alert, claim it per channel, deliver a message (or a digest when
several arrive together) with retries, and record every attempt and outcome."""

from __future__ import annotations

import asyncio
import logging
import random
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from prometheus_client import Counter

from services.notifier.routing import Route, channels_for
from shared.backoff import backoff_s
from shared.events import Alert

log = logging.getLogger(__name__)

MESSAGES = Counter("costwarden_notifier_messages_total", "Notifications sent or failed", ["channel", "outcome"])
SKIPPED = Counter("costwarden_notifier_duplicates_skipped_total", "Alert deliveries already claimed", ["channel"])


class DeliveryInProgress(Exception):
    """Some alert of the batch is being delivered under another live claim: the batch must come back
    later (nak), so that it is acked only once that delivery is known to have finished."""


@dataclass
class DeliveryFailed(Exception):
    """A channel could not deliver: a secret-free reason, whether a retry can help, and how long the
    receiver asked us to wait."""

    reason: str
    retryable: bool
    retry_after_s: float | None = None

    def __str__(self) -> str:
        return self.reason


class DeliveryLog(Protocol):
    """Claims (one delivery per alert and channel) and the record of every attempt."""

    async def claim(self, alert_key: str, channel: str) -> Literal["claimed", "busy", "done"]: ...

    async def finish(self, alerts: Sequence[Alert], channel: str, status: str) -> None: ...

    async def record(self, alerts: Sequence[Alert], channel: str, attempt: int, status: str,
                     error: str | None) -> None: ...

    async def channels_that_got(self, alert_key: str) -> list[str]: ...


class Channel(Protocol):
    name: str

    async def send(self, alerts: Sequence[Alert]) -> None: ...


class Notifier:
    def __init__(self, log_store: DeliveryLog, channels: Mapping[str, Channel], routes: Sequence[Route],
                 max_attempts: int, backoff_initial_s: float, backoff_max_s: float,
                 dead_letter: Callable[[Sequence[Alert], str, str], Awaitable[None]]) -> None:
        self.store = log_store
        self.channels = dict(channels)
        self.routes = list(routes)
        self.max_attempts = max_attempts
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.dead_letter = dead_letter

    async def route(self, alert: Alert) -> list[str]:
        """Resolved alerts go wherever the alert they resolve went; others follow the routes."""
        if alert.severity == "resolved" and alert.resolves:
            earlier = [c for c in await self.store.channels_that_got(alert.resolves) if c in self.channels]
            if earlier:
                return earlier
        return channels_for(alert, self.routes, self.channels)

    async def handle(self, alerts: Sequence[Alert]) -> None:
        """Deliver a batch: the alerts claimed for one channel go out as one message (a digest when
        there are several), every channel at the same time."""
        per_channel: dict[str, list[Alert]] = defaultdict(list)
        busy = 0
        for alert in alerts:
            for channel in await self.route(alert):
                outcome = await self.store.claim(alert.key, channel)
                if outcome == "claimed":
                    per_channel[channel].append(alert)
                elif outcome == "busy":
                    busy += 1
                else:
                    SKIPPED.labels(channel).inc()
        await asyncio.gather(*(self.deliver(channel, claimed) for channel, claimed in per_channel.items()))
        if busy:
            raise DeliveryInProgress(f"{busy} deliveries are held by a live claim")

    async def deliver(self, channel: str, alerts: list[Alert]) -> None:
        """Send, and again after a failure a retry can help, up to `max_attempts`: after the receiver's
        Retry-After when it gave one, else the backoff (with jitter). Every attempt is recorded."""
        sender = self.channels[channel]
        attempt = 0
        while True:
            attempt += 1
            try:
                await sender.send(alerts)
            except DeliveryFailed as failure:
                final = not failure.retryable or attempt >= self.max_attempts
                await self.store.record(alerts, channel, attempt, "failed" if final else "retrying", failure.reason)
                if final:
                    await self._give_up(channel, alerts, failure)
                    return
                await asyncio.sleep(failure.retry_after_s if failure.retry_after_s is not None else
                                    backoff_s(attempt, self.backoff_initial_s, self.backoff_max_s, random.random()))
                continue
            await self.store.record(alerts, channel, attempt, "sent", None)
            MESSAGES.labels(channel, "sent").inc()
            await self.store.finish(alerts, channel, "sent")
            return

    async def _give_up(self, channel: str, alerts: list[Alert], failure: DeliveryFailed) -> None:
        MESSAGES.labels(channel, "failed").inc()
        await self.store.finish(alerts, channel, "failed")
        log.error("%s delivery of %d alert(s) failed for good: %s", channel, len(alerts), failure.reason)
        await self.dead_letter(alerts, channel, failure.reason)
