"""The limiter, asked over core NATS request-reply on `llm.request` (any limiter replica answers)."""

from __future__ import annotations

import logging
from typing import Literal

import nats.errors
from nats.aio.client import Client as Nats
from prometheus_client import Counter

from shared.events import LimitDecision, LimitRequest
from shared.subjects import LLM_REQUEST

log = logging.getLogger(__name__)

LIMITER_DECISIONS = Counter("costwarden_api_limiter_decisions_total", "Limiter answers seen by the gateway",
                            ["outcome"])


class NatsLimiterClient:
    """Asks `llm.request` (core NATS request-reply; any limiter replica answers)."""

    def __init__(self, nc: Nats, timeout_s: float, failure_mode: Literal["closed", "open"]) -> None:
        self.nc = nc
        self.timeout_s = timeout_s
        self.failure_mode = failure_mode

    async def ask(self, request: LimitRequest) -> LimitDecision:
        try:
            reply = await self.nc.request(LLM_REQUEST, request.model_dump_json().encode(), timeout=self.timeout_s)
        except nats.errors.Error as exc:  # timeout, no responders, connection closed or reconnecting
            allowed = self.failure_mode == "open"
            LIMITER_DECISIONS.labels("unavailable").inc()
            log.warning("no limiter answered request %s (%s); failing %s", request.request_id,
                        type(exc).__name__, self.failure_mode)
            reason = ("Rate limiter unavailable; request allowed without a limit check" if allowed
                      else "Rate limiter unavailable; try again shortly")
            return LimitDecision.unavailable(request, allowed, reason)
        decision = LimitDecision.model_validate_json(reply.data)
        LIMITER_DECISIONS.labels("allowed" if decision.allowed else "denied").inc()
        return decision
