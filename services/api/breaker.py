"""A circuit breaker per provider, on this replica: after repeated failures, skip the provider for a
cool-down, then let one probe call through to see whether it is back. A provider that asks for time
(Retry-After) is held off for that long: a hold only ever lengthens the cool-down, never shortens it."""

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
        self.open_until = 0.0

    def allow(self) -> bool:
        """May a call go to the provider now? In half-open state only the single probe may."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN and self.clock() >= self.open_until:
            self._become(BreakerState.HALF_OPEN)
            return True
        return False

    def remaining_s(self) -> float:
        """How long the provider is still skipped (0 when closed, or when a probe is out)."""
        return max(0.0, self.open_until - self.clock()) if self.state is BreakerState.OPEN else 0.0

    def record_success(self) -> None:
        self._become(BreakerState.CLOSED)
        self.failures = 0

    def record_failure(self) -> None:
        self.failures += 1
        if self.state is BreakerState.HALF_OPEN or self.failures >= self.failure_threshold:
            self.hold(self.cooldown_s)

    def hold(self, seconds: float) -> None:
        """Skip the provider for at least `seconds` from now (a cool-down already longer stays)."""
        self.open_until = max(self.open_until, self.clock() + seconds)
        self._become(BreakerState.OPEN)

    def _become(self, state: BreakerState) -> None:
        if state is not self.state:
            self.state = state
            self.on_change(state)
