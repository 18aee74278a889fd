"""The limiter, asked over core NATS request-reply on `llm.request` (any limiter replica answers). The
one place that decides what an answer, or the lack of one, means for the caller."""

from __future__ import annotations

import logging
from typing import Literal

import nats.errors
from nats.aio.client import Client as Nats
from prometheus_client import Counter

from services.api.admission import Denied, Granted, LimitOutcome, Unavailable, Unchecked
from shared.events import LimitDecision, LimitRequest
from shared.subjects import LLM_REQUEST

log = logging.getLogger(__name__)

LIMITER_DECISIONS = Counter("costwarden_api_limiter_decisions_total", "Limiter answers seen by the gateway",
                            ["outcome"])
RETRY_UNAVAILABLE_S = 5.0


class NatsLimiterClient:
    """`failure_mode` (LIMITER_FAILURE_MODE) applies when no limiter answers; a limiter that could not
    reach its store has applied its own (the same setting) and says so (`LimitDecision.unchecked`)."""

    def __init__(self, nc: Nats, timeout_s: float, failure_mode: Literal["closed", "open"]) -> None:
        self.nc = nc
        self.timeout_s = timeout_s
        self.failure_mode = failure_mode

    async def ask(self, request: LimitRequest) -> LimitOutcome:
        try:
            reply = await self.nc.request(LLM_REQUEST, request.model_dump_json().encode(), timeout=self.timeout_s)
        except nats.errors.Error as exc:  # timeout, no responders, connection closed or reconnecting
            LIMITER_DECISIONS.labels("unavailable").inc()
            log.warning("no limiter answered request %s (%s); failing %s", request.request_id,
                        type(exc).__name__, self.failure_mode)
            if self.failure_mode == "open":
                return Unchecked("Rate limiter unavailable; request allowed without a limit check")
            return Unavailable("Rate limiter unavailable; try again shortly", RETRY_UNAVAILABLE_S)
        return outcome_of(LimitDecision.model_validate_json(reply.data))


def outcome_of(decision: LimitDecision) -> LimitOutcome:
    """What a limiter's answer means for the caller."""
    LIMITER_DECISIONS.labels("allowed" if decision.allowed else "denied").inc()
    if decision.unchecked:
        if decision.allowed:
            return Unchecked(decision.reason or "rate limiter storage unavailable")
        return Unavailable(decision.reason or "rate limiter unavailable", decision.retry_after_s)
    return Granted(decision) if decision.allowed else Denied(decision)
