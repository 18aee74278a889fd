"""The 429 body of the original system and the IETF RateLimit headers
(draft-ietf-httpapi-ratelimit-headers-10), built from a limiter decision. Pure rules; the HTTP edge
(http/edge.py) sends them."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.events import LimitDecision


def policy_name(decision: LimitDecision) -> str:
    if decision.limited_by in ("tokens", "budget"):
        return f"{decision.tier}-{decision.limited_by}"
    return decision.tier if decision.policy == "standard" else f"{decision.tier}-{decision.policy}"


def seconds_until(moment: datetime, now: datetime) -> int:
    return max(0, math.ceil((moment - now).total_seconds()))


def ratelimit_headers(decision: LimitDecision, now: datetime | None = None) -> dict[str, str]:
    """The headers of a checked decision (an unchecked one has no limit to tell)."""
    now = now or datetime.now(UTC)
    name = policy_name(decision)
    return {
        "RateLimit-Policy": f'"{name}";q={decision.limit};w={decision.window_s}',
        "RateLimit": f'"{name}";r={decision.remaining};t={seconds_until(decision.reset_at, now)}',
    }


def iso_utc_seconds(moment: datetime) -> str:
    """2024-11-23T12:00:00Z, rounded up to the whole second so a client never comes back early."""
    moment = moment.astimezone(UTC)
    if moment.microsecond:
        moment = moment.replace(microsecond=0) + timedelta(seconds=1)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def too_many_requests(decision: LimitDecision, upgrade_url: str) -> tuple[dict[str, Any], dict[str, str]]:
    """(body, headers) of the 429 answer, the body exactly as the original system sent it."""
    body = {
        "error": "Rate limit exceeded",
        "message": decision.reason,
        "tier": decision.tier,
        "limit": decision.limit,
        "windowMs": decision.window_s * 1000,
        "retryAfter": iso_utc_seconds(decision.reset_at),
        "upgradeUrl": upgrade_url,
    }
    headers = {"Retry-After": str(max(1, math.ceil(decision.retry_after_s))), **ratelimit_headers(decision)}
    return body, headers
