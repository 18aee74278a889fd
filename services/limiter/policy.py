"""The limits around a request, without I/O: which counters it touches and what it would reserve (its
plan), and how the store's reading becomes the decision sent back, in the original system's words.
The check itself is atomic in the store (redis_limiter_store.py's script): it decides; this module
prepares the question and words the answer. Also what a finished call settles to."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from shared.events import LimitDecision, LimitedBy, LimitRequest, LlmCompleted
from shared.policy import ModelConfig, TierLimits, completion_limit
from shared.pricing import PER_MILLION, PriceCatalog, to_nano_usd

UNKNOWN_TIER = "anonymous"


def subject_key(user_id: str | None, client_ip: str | None) -> str:
    """The Redis hash tag of a caller: every key of one decision lives in its slot (Redis Cluster)."""
    raw = f"user:{user_id}" if user_id else f"ip:{client_ip or 'unknown'}"
    return "cw:{" + raw.replace("{", "(").replace("}", ")") + "}"


@dataclass(frozen=True)
class LimitPlan:
    """Everything the atomic check needs for one request."""

    key: str
    request_id: str
    requests_limit: int
    window_ms: int
    strict_limit: int  # 0 when the request is not under the strict policy
    tokens_per_minute: int
    reserve_tokens: int
    budget_nano: int
    reserve_nano: int


@dataclass(frozen=True)
class CounterReading:
    """What the Lua script answered."""

    allowed: bool
    limited_by: LimitedBy | None
    limit: int
    remaining: int
    reset_ms: int
    now_ms: int


def reserved_tokens(request: LimitRequest, default_completion: int, cap: int) -> int:
    """Worst case of one call: prompt estimate plus what every choice may generate, capped."""
    completion = request.max_tokens if request.max_tokens is not None else default_completion
    return min(request.prompt_tokens_estimate + request.choices * completion, cap)


class LimitPolicy:
    def __init__(self, tiers: dict[str, TierLimits], catalog: PriceCatalog, models: Mapping[str, ModelConfig],
                 default_max_tokens: int, reservation_cap_tokens: int) -> None:
        self.tiers = tiers
        self.catalog = catalog
        self.models = models
        self.default_max_tokens = default_max_tokens
        self.reservation_cap_tokens = reservation_cap_tokens
        self._rates: dict[str, Decimal] = {}

    def reservation_rate(self, model: str) -> Decimal:
        """USD per 1M tokens a reservation assumes: the dearest route the public model may take (a call
        may fall back to it), or the model itself when it is not one the gateway maps (an upstream
        service calling its provider directly)."""
        rate = self._rates.get(model)
        if rate is None:
            config = self.models.get(model)
            rate = self.catalog.dearest_rate(config.served_by() if config else [(None, model)])
            if len(self._rates) < 10_000:
                self._rates[model] = rate
        return rate

    def tier_of(self, request: LimitRequest) -> tuple[str, TierLimits]:
        name = request.tier if request.tier in self.tiers else UNKNOWN_TIER
        return name, self.tiers[name]

    def plan(self, request: LimitRequest) -> LimitPlan:
        _, limits = self.tier_of(request)
        default_completion = completion_limit(self.models.get(request.model), self.default_max_tokens)
        tokens = reserved_tokens(request, default_completion, self.reservation_cap_tokens)
        return LimitPlan(
            key=subject_key(request.user_id, request.client_ip),
            request_id=request.request_id,
            requests_limit=limits.requests,
            window_ms=limits.window_s * 1000,
            strict_limit=limits.strict_requests if request.policy == "strict" else 0,
            tokens_per_minute=limits.tokens_per_minute,
            reserve_tokens=tokens,
            budget_nano=to_nano_usd(limits.daily_budget_usd),
            reserve_nano=to_nano_usd(tokens * self.reservation_rate(request.model) / PER_MILLION),
        )

    def decision(self, request: LimitRequest, plan: LimitPlan, reading: CounterReading) -> LimitDecision:
        tier, limits = self.tier_of(request)
        now = datetime.fromtimestamp(reading.now_ms / 1000, UTC)
        reset_at = datetime.fromtimestamp(reading.reset_ms / 1000, UTC)
        retry_after = 0 if reading.allowed else max(1, math.ceil((reading.reset_ms - reading.now_ms) / 1000))
        window_s, limit = limits.window_s, reading.limit
        if reading.limited_by == "tokens":
            window_s = 60
        elif reading.limited_by == "budget":
            window_s, limit = 86_400, reading.limit // 10**7  # nano-USD -> cents
        return LimitDecision(
            allowed=reading.allowed,
            tier=tier,
            policy=request.policy,
            limit=limit,
            remaining=max(0, reading.remaining),
            window_s=window_s,
            reset_at=reset_at if reset_at > now else now + timedelta(seconds=window_s),
            retry_after_s=retry_after,
            reason=None if reading.allowed else denial_message(tier, reading.limited_by, limits, window_s),
            limited_by=reading.limited_by,
            reserved_tokens=plan.reserve_tokens if reading.allowed else 0,
            reserved_usd=Decimal(plan.reserve_nano) / Decimal(10**9) if reading.allowed else Decimal(0),
        )

    def settlement(self, event: LlmCompleted) -> tuple[str, int, int] | None:
        """(key, actual tokens, actual nano-USD) of a finished call, or None when the reservation must
        stay as it is: usage marked estimated but with no tokens is a sender that could not count, and
        settling it would forget spend the provider bills (the reservation keeps the worst case)."""
        if event.usage_source == "estimated" and event.total_tokens == 0:
            return None
        nano = to_nano_usd(self.catalog.cost_of(event).usd)
        return subject_key(event.user_id, event.client_ip), event.total_tokens, nano


def _per_window(window_s: int) -> str:
    return {60: "per minute", 3600: "per hour", 86_400: "per day"}.get(window_s, f"per {window_s} seconds")


def denial_message(tier: str, limited_by: str | None, limits: TierLimits, window_s: int) -> str:
    """The text of the original 429 ("Free tier limit: 10 LLM requests per hour. Upgrade for more.")."""
    name = tier.capitalize()
    if limited_by == "strict":
        return (f"{name} tier limit: {limits.strict_requests} long-form LLM requests "
                f"{_per_window(window_s)}. Upgrade for more.")
    if limited_by == "tokens":
        return f"{name} tier limit: {limits.tokens_per_minute} LLM tokens per minute. Upgrade for more."
    if limited_by == "budget":
        return f"{name} tier daily LLM budget (${limits.daily_budget_usd}) is spent. Upgrade for more."
    return f"{name} tier limit: {limits.requests} LLM requests {_per_window(window_s)}. Upgrade for more."
