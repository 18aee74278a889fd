"""Denials announced on `limit.violation` (JetStream `LIMITS`), one message per violation id."""

from __future__ import annotations

import logging

import nats.errors
from nats.js import JetStreamContext

from shared.bus import publish_event
from shared.events import LimitViolation
from shared.subjects import LIMIT_VIOLATION

log = logging.getLogger(__name__)


class JetStreamViolationPublisher:
    def __init__(self, js: JetStreamContext) -> None:
        self.js = js

    async def publish(self, violation: LimitViolation) -> None:
        try:
            await publish_event(self.js, LIMIT_VIOLATION, violation, violation.id)
        except (nats.errors.Error, TimeoutError) as exc:  # the caller still gets its denial
            log.warning("could not publish limit.violation for %s: %s", violation.request_id, type(exc).__name__)
