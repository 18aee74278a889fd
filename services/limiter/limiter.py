"""The limiter use case: answer one request (plan it, have the store check and reserve it atomically,
word the answer, announce a denial), settle finished calls, and hold the limits administrators set
(reloaded when they change). The store is a port; when it cannot be reached the answer is
LIMITER_FAILURE_MODE's, marked `limited_by: unavailable`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Literal, Protocol

from services.limiter.policy import EMPTY_BOOK, CounterReading, LimitPlan, LimitPolicy
from services.limiter.scopes import (
    CounterSeed,
    LimitsBook,
    SpendAsk,
    budget_counters,
    budget_seed,
    moved_users,
    spend_asks,
    tier_day_seed,
    utc_day,
)
from shared.events import LimitDecision, LimitRequest, LimitViolation, LlmCompleted, utc_now

log = logging.getLogger(__name__)


class StorageUnavailable(Exception):
    """The counters could not be read or written (the store is down, slow or refusing)."""


class LimiterStore(Protocol):
    async def check_and_reserve(self, plan: LimitPlan) -> CounterReading: ...
    async def settle_many(self, settlements: Sequence[tuple[str, str, int, int]]) -> int: ...

    async def seed(self, seeds: Sequence[CounterSeed]) -> int:
        """Start counters from the ledger's spend where they have none yet; StorageUnavailable if it cannot."""
        ...


class LimitsUnavailable(Exception):
    """The limits could not be read (their database did not answer)."""


class LimitsSource(Protocol):
    async def load(self) -> LimitsBook:
        """Every scope's limits, the teams' members and the users of keys with limits; LimitsUnavailable."""
        ...

    async def spend(self, asks: Sequence[SpendAsk]) -> list[dict[datetime, Decimal]]:
        """For each ask, the ledger's spend per 15-minute bucket; LimitsUnavailable."""
        ...


class ViolationSink(Protocol):
    async def publish(self, violation: LimitViolation) -> None:
        """Announce a denial; never raises (the caller gets its denial whatever happens to the record)."""
        ...


class Limiter:
    def __init__(self, policy: LimitPolicy, store: LimiterStore, failure_mode: Literal["closed", "open"],
                 violations: ViolationSink, limits: LimitsSource | None = None,
                 clock: Callable[[], datetime] = utc_now) -> None:
        self.policy = policy
        self.store = store
        self.failure_mode = failure_mode
        self.violations = violations
        self.limits = limits
        self.clock = clock
        # None until the limits of keys, users and teams were read once: until then no call can be checked
        # against them, and each is answered as when Redis is unreachable (LIMITER_FAILURE_MODE).
        self.book: LimitsBook | None = EMPTY_BOOK if limits is None else None
        self._reloading = asyncio.Lock()

    @property
    def limits_loaded(self) -> bool:
        return self.book is not None

    def unchecked(self, request: LimitRequest, what: str, cause: str) -> LimitDecision:
        """The failure mode's answer when `what` cannot be consulted."""
        allowed = self.failure_mode == "open"
        log.warning("limiter %s unreachable (%s); failing %s for request %s", what, cause, self.failure_mode,
                    request.request_id)
        return LimitDecision.unavailable(request, allowed, f"Rate limiter {what} unavailable; " + (
            "request allowed without a limit check" if allowed else "try again shortly"))

    async def decide(self, request: LimitRequest) -> LimitDecision:
        if self.book is None:
            return self.unchecked(request, "limits", "not read yet")
        plan = self.policy.plan(request, self.book)
        if plan.model_refused_by is not None:
            refusal = self.policy.model_refusal(request, plan)
            await self.violations.publish(violation_of(request, refusal))
            return refusal
        try:
            reading = await self.store.check_and_reserve(plan)
        except StorageUnavailable as exc:
            return self.unchecked(request, "storage", str(exc))
        decision = self.policy.decision(request, plan, reading)
        if not decision.allowed:
            await self.violations.publish(violation_of(request, decision))
        return decision

    async def settle(self, events: Sequence[LlmCompleted]) -> int:
        settlements = []
        for event in events:
            settlement = self.policy.settlement(event, self.book or EMPTY_BOOK)
            if settlement is not None:
                key, tokens, nano = settlement
                settlements.append((key, event.request_id, tokens, nano))
        return await self.store.settle_many(settlements) if settlements else 0


    async def reload(self) -> None:
        """Read the limits again and use them from now on. A counter this replica did not use before (a new
        budget, or one under another tag because its user changed team) first starts from the ledger's
        spend in its period, where no replica has started it yet; so does a moved user's spend today
        against the tier's daily budget. Reloads run one at a time; LimitsUnavailable or
        StorageUnavailable leave the limits as they were."""
        assert self.limits is not None
        async with self._reloading:
            book = await self.limits.load()
            await self.store.seed(await self._seeds(self.book or EMPTY_BOOK, book))
            self.book = book

    async def _seeds(self, old: LimitsBook, new: LimitsBook) -> list[CounterSeed]:
        assert self.limits is not None
        now = self.clock()
        before = budget_counters(old)
        counters = [counter for key, counter in budget_counters(new).items() if key not in before]
        moved = moved_users(old, new)
        day = utc_day(now)
        asks = [*spend_asks(counters, now), *(SpendAsk("user", user, day.start, day.end) for user in moved)]
        if not asks:
            return []
        spent = await self.limits.spend(asks)
        seeds = [budget_seed(counter, spend, now) for counter, spend in zip(counters, spent, strict=False)]
        seeds += [tier_day_seed(user, new.team_of(user), sum(spend.values(), Decimal(0)), now)
                  for user, spend in zip(moved, spent[len(counters):], strict=True)]
        return seeds


def violation_of(request: LimitRequest, decision: LimitDecision) -> LimitViolation:
    return LimitViolation(
        request_id=request.request_id, user_id=request.user_id, client_ip=request.client_ip,
        tier=decision.tier, endpoint=request.endpoint, policy=request.policy,
        limited_by=decision.limited_by or "requests", limit=decision.limit, window_s=decision.window_s,
    )
