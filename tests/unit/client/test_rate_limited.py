"""RateLimited carries the limiter's whole decision: its retry-after rounded up, the gateway's own 429
body for it, and whatever fields a newer limiter adds."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
from costwarden_client import LimitDecision, LimiterUnavailable, RateLimited

import shared.events as server
from services.api.ratelimit_headers import too_many_requests


def denial(**extra) -> server.LimitDecision:
    return server.LimitDecision(allowed=False, tier="free", limit=10, remaining=0, window_s=3600,
                                reset_at=datetime(2026, 3, 1, 12, 0, 0, 250_000, tzinfo=UTC),
                                retry_after_s=1799.2, reason="Free tier limit: 10 LLM requests per hour. Upgrade for more.",
                                limited_by="requests", **extra)


def test_the_body_is_the_gateways_429_body():
    decision = denial()
    limited = RateLimited(LimitDecision.model_validate_json(decision.model_dump_json()))
    body, headers = too_many_requests(decision, "/pricing")
    assert limited.body("/pricing") == body
    assert limited.retry_after_s == int(headers["Retry-After"]) == math.ceil(1799.2)
    assert str(limited) == decision.reason


def test_fields_a_newer_limiter_sends_are_kept_and_shown():
    wire = denial().model_dump(mode="json") | {"scope": "user", "budget_usd": "1.00"}
    limited = RateLimited(LimitDecision.model_validate(wire))
    assert limited.decision.scope == "user" and limited.body()["budget_usd"] == "1.00"
    assert "upgradeUrl" not in limited.body()


@pytest.mark.parametrize(("retry_after_s", "expected"), [(0, 1), (0.2, 1), (5, 5), (5.01, 6)])
def test_retry_after_is_whole_seconds_rounded_up_and_never_zero(retry_after_s, expected):
    decision = LimitDecision(allowed=False, tier="pro", limit=0, remaining=0, window_s=0,
                             reset_at=datetime.now(UTC) + timedelta(seconds=5), retry_after_s=retry_after_s,
                             limited_by="unavailable")
    assert LimiterUnavailable(decision).retry_after_s == expected
    assert isinstance(LimiterUnavailable(decision), RateLimited)
