"""A circuit breaker per provider: after repeated failures, skip the provider for a cool-down,
then let one probe call through to see whether it is back."""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import StrEnum


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(self, failure_threshold: int, cooldown_s: float,
                 clock: Callable[[], float] = time.monotonic,
                 on_change: Callable[[BreakerState], None] = lambda state: None) -> None:
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        self.clock = clock
        self.on_change = on_change
        self.state = BreakerState.CLOSED
        self.failures = 0
        self.opened_at = 0.0

    def allow(self) -> bool:
        """May a call go to the provider now? In half-open state only the single probe may."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN and self.clock() - self.opened_at >= self.cooldown_s:
            self._become(BreakerState.HALF_OPEN)
            return True
        return False

    def record_success(self) -> None:
        self._become(BreakerState.CLOSED)
        self.failures = 0

    def record_failure(self) -> None:
        self.failures += 1
        if self.state is BreakerState.HALF_OPEN or self.failures >= self.failure_threshold:
            self._become(BreakerState.OPEN)
            self.opened_at = self.clock()

    def _become(self, state: BreakerState) -> None:
        if state is not self.state:
            self.state = state
            self.on_change(state)
