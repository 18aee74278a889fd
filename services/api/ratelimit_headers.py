"""The 429 body of the original system and the IETF RateLimit headers
(draft-ietf-httpapi-ratelimit-headers-10), built from a limiter decision. Pure rules; the HTTP edge
(http/edge.py) sends them. A denial by a key's, user's or team's own limit adds which scope denied and,
for a budget, its period, amount, spend and reset, and names its policy after them
(`"team-budget-month"`); a denial by the tier keeps the original body as it was."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.events import LimitDecision


def policy_name(decision: LimitDecision) -> str:
    if decision.scope is not None:
        name = f"{decision.scope}-{decision.limited_by}"
        if decision.limited_by == "budget":
            name += f"-{decision.period}" if decision.period else f"-rolling-{decision.rolling}"
        return name
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
    if decision.scope is not None:
        body.update(scope_fields(decision))
    headers = {"Retry-After": str(max(1, math.ceil(decision.retry_after_s))), **ratelimit_headers(decision)}
    return body, headers


def scope_fields(decision: LimitDecision) -> dict[str, Any]:
    """Which scope denied, and for a budget: its period (`period` and `timezone`, or `rolling`), amount,
    what is spent and reserved in the period, and when it resets."""
    fields: dict[str, Any] = {"scope": decision.scope, "scope_id": decision.scope_id}
    if decision.limited_by == "budget":
        for name in ("period", "timezone", "rolling"):
            if getattr(decision, name) is not None:
                fields[name] = getattr(decision, name)
        fields["budget_usd"] = str(decision.budget_usd)
        fields["spent_usd"] = str(decision.spent_usd)
        fields["resets_at"] = iso_utc_seconds(decision.resets_at or decision.reset_at)
    return fields
