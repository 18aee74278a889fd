"""The 429 body and the rate-limit headers of draft-ietf-httpapi-ratelimit-headers-10."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.api.ratelimit_headers import iso_utc_seconds, ratelimit_headers, too_many_requests
from shared.events import LimitDecision

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
