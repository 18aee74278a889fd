"""What the health monitor announces, on NATS."""

from __future__ import annotations

from nats.aio.client import Client as Nats

from shared.bus import publish_alert
from shared.events import Alert, HealthChanged
from shared.subjects import HEALTH_CHANGED


class NatsAnnouncer:
    """Status changes on `health.changed` (core NATS), outage alerts on `alert.health.*` (JetStream)."""

    def __init__(self, nc: Nats) -> None:
        self.nc = nc

    async def changed(self, event: HealthChanged) -> None:
        await self.nc.publish(HEALTH_CHANGED, event.model_dump_json().encode())

    async def alert(self, alert: Alert) -> None:
        await publish_alert(self.nc.jetstream(), alert)
