"""The limiter use case: answer one request (plan it, have the store check and reserve it atomically,
word the answer, announce a denial), and settle finished calls. The store is a port; when it cannot
be reached the answer is LIMITER_FAILURE_MODE's, marked `limited_by: unavailable`."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal, Protocol

from services.limiter.policy import CounterReading, LimitPlan, LimitPolicy
from shared.events import LimitDecision, LimitRequest, LimitViolation, LlmCompleted

log = logging.getLogger(__name__)


class StorageUnavailable(Exception):
    """The counters could not be read or written (the store is down, slow or refusing)."""


class LimiterStore(Protocol):
    async def check_and_reserve(self, plan: LimitPlan) -> CounterReading: ...
    async def settle_many(self, settlements: Sequence[tuple[str, str, int, int]]) -> int: ...


class ViolationSink(Protocol):
    async def publish(self, violation: LimitViolation) -> None:
        """Announce a denial; never raises (the caller gets its denial whatever happens to the record)."""
        ...


class Limiter:
    def __init__(self, policy: LimitPolicy, store: LimiterStore, failure_mode: Literal["closed", "open"],
                 violations: ViolationSink) -> None:
        self.policy = policy
        self.store = store
        self.failure_mode = failure_mode
        self.violations = violations

    async def decide(self, request: LimitRequest) -> LimitDecision:
        plan = self.policy.plan(request)
        try:
            reading = await self.store.check_and_reserve(plan)
        except StorageUnavailable as exc:
            allowed = self.failure_mode == "open"
            log.warning("limiter storage unreachable (%s); failing %s for request %s",
                        exc, self.failure_mode, request.request_id)
            reason = ("Rate limiter storage unavailable; request allowed without a limit check"
                      if allowed else "Rate limiter storage unavailable; try again shortly")
            return LimitDecision.unavailable(request, allowed, reason)
        decision = self.policy.decision(request, plan, reading)
        if not decision.allowed:
            await self.violations.publish(violation_of(request, decision))
        return decision

    async def settle(self, events: Sequence[LlmCompleted]) -> int:
        settlements = []
        for event in events:
            settlement = self.policy.settlement(event)
            if settlement is not None:
                key, tokens, nano = settlement
                settlements.append((key, event.request_id, tokens, nano))
        return await self.store.settle_many(settlements) if settlements else 0


def violation_of(request: LimitRequest, decision: LimitDecision) -> LimitViolation:
    return LimitViolation(
        request_id=request.request_id, user_id=request.user_id, client_ip=request.client_ip,
        tier=decision.tier, endpoint=request.endpoint, policy=request.policy,
        limited_by=decision.limited_by or "requests", limit=decision.limit, window_s=decision.window_s,
    )
