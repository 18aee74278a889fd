"""Announces a change of teams or limits on `limits.changed` (core NATS), once it is committed: every
limiter and cost replica reads the limits again."""

from __future__ import annotations

import logging

import nats.errors
from nats.aio.client import Client as Nats

from shared.events import LimitsChanged
from shared.subjects import LIMITS_CHANGED

log = logging.getLogger(__name__)


class NatsLimitsAnnouncer:
    def __init__(self, nc: Nats, timeout_s: int = 2) -> None:
        self.nc, self.timeout_s = nc, timeout_s

    async def announce(self, subject: str) -> None:
        """Sent before the admin API answers. Never raises: while NATS is away the change is still made, and
        the limiters read it when their connection comes back, or at their next periodic reload."""
        try:
            await self.nc.publish(LIMITS_CHANGED, LimitsChanged(subject=subject).model_dump_json().encode())
            await self.nc.flush(timeout=self.timeout_s)
        except (nats.errors.Error, TimeoutError) as exc:
            log.warning("could not announce limits.changed for %s (%s): the limiters apply the change when they "
                        "next read the limits", subject, type(exc).__name__)
