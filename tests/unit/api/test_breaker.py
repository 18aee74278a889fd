"""The circuit breaker of a provider."""

from __future__ import annotations

from services.api.breaker import BreakerState, CircuitBreaker


def test_breaker_opens_after_threshold_and_half_opens_after_cooldown():
    now = [0.0]
    breaker = CircuitBreaker(failure_threshold=3, cooldown_s=10, clock=lambda: now[0])
    for _ in range(3):
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.state is BreakerState.OPEN and not breaker.allow()
    now[0] = 10.0
    assert breaker.allow() and breaker.state is BreakerState.HALF_OPEN
    assert not breaker.allow()  # only one probe at a time
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN and not breaker.allow()
    now[0] = 20.0
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED and breaker.allow()


def test_each_change_of_state_is_reported_once():
    now = [0.0]
    seen = []
    breaker = CircuitBreaker(failure_threshold=2, cooldown_s=10, clock=lambda: now[0], on_change=seen.append)
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_failure()
    now[0] = 11
    assert breaker.allow()
    breaker.record_success()
    breaker.record_success()
    assert seen == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]
