from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from services.api.breaker import BreakerState, CircuitBreaker
from services.api.callers import client_ip, parse_networks
from services.api.ratelimit_headers import iso_utc_seconds, ratelimit_headers, too_many_requests
from services.limiter.policy import CounterReading, LimitPolicy, reserved_tokens, subject_key
from shared.events import LimitDecision, LimitRequest
from shared.pricing import PriceCatalog
from shared.settings import DEFAULT_TIERS

NOW = datetime(2024, 11, 23, 11, 0, 0, tzinfo=UTC)


def decision(**overrides) -> LimitDecision:
    fields = dict(allowed=False, tier="free", limit=10, remaining=0, window_s=3600,
                  reset_at=NOW + timedelta(seconds=1799.2), retry_after_s=1799.2,
                  reason="Free tier limit: 10 LLM requests per hour. Upgrade for more.", limited_by="requests")
    return LimitDecision(**{**fields, **overrides})


def test_429_body_is_the_original_shape_and_retry_after_rounds_up():
    body, headers = too_many_requests(decision(), "/pricing")
    assert body == {
        "error": "Rate limit exceeded",
        "message": "Free tier limit: 10 LLM requests per hour. Upgrade for more.",
        "tier": "free", "limit": 10, "windowMs": 3_600_000, "retryAfter": "2024-11-23T11:30:00Z",
        "upgradeUrl": "/pricing",
    }
    assert headers["Retry-After"] == "1800"


def test_ratelimit_headers_follow_draft_10():
    headers = ratelimit_headers(decision(allowed=True, remaining=7), now=NOW)
    assert headers == {"RateLimit-Policy": '"free";q=10;w=3600', "RateLimit": '"free";r=7;t=1800'}
    strict = ratelimit_headers(decision(policy="strict", limit=2, limited_by="strict"), now=NOW)
    assert strict["RateLimit-Policy"] == '"free-strict";q=2;w=3600'


def test_iso_time_is_utc_with_z_and_never_early():
    assert iso_utc_seconds(datetime(2024, 11, 23, 12, 0, 0, tzinfo=UTC)) == "2024-11-23T12:00:00Z"
    assert iso_utc_seconds(datetime(2024, 11, 23, 11, 59, 59, 1, tzinfo=UTC)) == "2024-11-23T12:00:00Z"


def test_client_ip_honours_forwarded_for_only_from_trusted_proxies():
    trusted = parse_networks(["10.0.0.0/8"])
    assert client_ip("192.0.2.9", "198.51.100.1", trusted) == "192.0.2.9"
    assert client_ip("10.0.0.5", "198.51.100.1", trusted) == "198.51.100.1"
    # a client cannot hide behind a forged first hop: the rightmost untrusted address wins
    assert client_ip("10.0.0.5", "203.0.113.7, 198.51.100.1, 10.1.1.1", trusted) == "198.51.100.1"
    assert client_ip("10.0.0.5", "not-an-ip", trusted) == "10.0.0.5"


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


def test_reservation_is_prompt_plus_max_tokens_capped():
    request = LimitRequest(request_id="r", tier="free", model="m", prompt_tokens_estimate=100, max_tokens=500)
    assert reserved_tokens(request, default_max_tokens=1024, cap=10_000) == 600
    assert reserved_tokens(request, default_max_tokens=1024, cap=300) == 300
    no_max = LimitRequest(request_id="r", tier="free", model="m", prompt_tokens_estimate=10)
    assert reserved_tokens(no_max, default_max_tokens=1024, cap=10_000) == 1034


def test_caller_keys_share_one_hash_tag_and_cannot_break_out_of_it():
    assert subject_key("42", None) == "cw:{user:42}"
    assert subject_key(None, "192.0.2.1") == "cw:{ip:192.0.2.1}"
    assert subject_key("a}b{c", None) == "cw:{user:a)b(c}"


def test_unknown_tier_is_treated_as_anonymous_and_plan_uses_tier_limits():
    policy = LimitPolicy(DEFAULT_TIERS, PriceCatalog.with_overrides({}), 1024, 32_768)
    request = LimitRequest(request_id="r", user_id="u", tier="platinum", model="meta-llama/Llama-3-8b-chat-hf",
                           max_tokens=1000, policy="strict")
    plan = policy.plan(request)
    assert (plan.requests_limit, plan.strict_limit, plan.window_ms) == (3, 1, 3_600_000)
    assert plan.reserve_nano == 200_000  # 1000 tokens at $0.20 per 1M
    reading = CounterReading(allowed=False, limited_by="strict", limit=1, remaining=0,
                             reset_ms=1_700_000_100_400, now_ms=1_700_000_000_000)
    result = policy.decision(request, plan, reading)
    assert result.retry_after_s == 101 and result.tier == "anonymous" and result.reserved_usd == Decimal(0)
    assert result.reason == "Anonymous tier limit: 1 long-form LLM requests per hour. Upgrade for more."

