"""The limits around a request, without I/O: which counters it touches (its tier's, and those of its
key's, user's and team's own limits) and what it would reserve (its plan), and how the store's reading
becomes the decision sent back, in the original system's words. The check itself is atomic in the store
(redis_limiter_store.py's script): it decides; this module prepares the question and words the answer.
Also what a finished call settles to."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from services.limiter.scopes import (
    CalendarSpans,
    LimitsBook,
    ScopeCheck,
    caller_base,
    scope_checks,
    subject_key,
)
from shared.events import LimitDecision, LimitedBy, LimitRequest, LlmCompleted, utc_now
from shared.limits import Budget, Scope
from shared.policy import ModelConfig, TierLimits, completion_limit
from shared.pricing import PER_MILLION, PriceCatalog, to_nano_usd

__all__ = ["CounterReading", "LimitPlan", "LimitPolicy", "LimitsBook", "reserved_tokens", "subject_key"]

UNKNOWN_TIER = "anonymous"
EMPTY_BOOK = LimitsBook()
NANO = Decimal(10**9)


@dataclass(frozen=True)
class LimitPlan:
    """Everything the atomic check needs for one request. `key` is where the caller's tier counters and
    reservations live; `checks` are the counters of its key's, user's and team's own limits."""

    key: str
    request_id: str
    requests_limit: int
    window_ms: int
    strict_limit: int  # 0 when the request is not under the strict policy
    tokens_per_minute: int
    reserve_tokens: int
    budget_nano: int
    reserve_nano: int
    checks: tuple[ScopeCheck, ...] = ()
    team_id: str | None = None
    model_refused_by: tuple[Scope, str] | None = None  # a scope whose `models` does not list the model
    cache_hit: bool = False  # counted in the request windows only: nothing reserved, no budget checked


@dataclass(frozen=True)
class CounterReading:
    """What the Lua script answered. `check` is 0 when the tier's counters decided, else the 1-based index
    of the scope check that denied; `used` is that counter's value (nano-USD spent and reserved, for a
    budget)."""

    allowed: bool
    limited_by: LimitedBy | None
    limit: int
    remaining: int
    reset_ms: int
    now_ms: int
    check: int = 0
    used: int = 0


def reserved_tokens(request: LimitRequest, default_completion: int, cap: int) -> int:
    """Worst case of one call: prompt estimate plus what every choice may generate, capped."""
    completion = request.max_tokens if request.max_tokens is not None else default_completion
    return min(request.prompt_tokens_estimate + request.choices * completion, cap)


class LimitPolicy:
    def __init__(self, tiers: dict[str, TierLimits], catalog: PriceCatalog, models: Mapping[str, ModelConfig],
                 default_max_tokens: int, reservation_cap_tokens: int,
                 clock: Callable[[], datetime] = utc_now) -> None:
        self.tiers = tiers
        self.catalog = catalog
        self.models = models
        self.default_max_tokens = default_max_tokens
        self.reservation_cap_tokens = reservation_cap_tokens
        self.clock = clock
        self._rates: dict[str, Decimal] = {}
        self._spans = CalendarSpans()

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

    def plan(self, request: LimitRequest, book: LimitsBook = EMPTY_BOOK) -> LimitPlan:
        _, limits = self.tier_of(request)
        hit = request.cache_hit
        default_completion = completion_limit(self.models.get(request.model), self.default_max_tokens)
        tokens = 0 if hit else reserved_tokens(request, default_completion, self.reservation_cap_tokens)
        team = book.team_of(request.user_id)
        scopes = book.scopes_of(request.api_key_id, request.user_id, team)
        refused = next(((scope, scope_id) for scope, scope_id, own in scopes if not own.allows(request.model)), None)
        checks = scope_checks(scopes, self._spans, self.clock()) if scopes else ()
        return LimitPlan(
            key=caller_base(request.user_id, request.client_ip, team),
            request_id=request.request_id,
            requests_limit=limits.requests,
            window_ms=limits.window_s * 1000,
            strict_limit=limits.strict_requests if request.policy == "strict" else 0,
            tokens_per_minute=limits.tokens_per_minute,
            reserve_tokens=tokens,
            budget_nano=to_nano_usd(limits.daily_budget_usd),
            reserve_nano=to_nano_usd(tokens * self.reservation_rate(request.model) / PER_MILLION),
            checks=tuple(check for check in checks if check.kind == "requests") if hit else checks,
            team_id=team,
            model_refused_by=refused,
            cache_hit=hit,
        )

    def model_refusal(self, request: LimitRequest, plan: LimitPlan) -> LimitDecision:
        """A scope's `models` does not list the model: refused before anything is counted or reserved."""
        assert plan.model_refused_by is not None
        scope, scope_id = plan.model_refused_by
        now = self.clock()
        return LimitDecision(
            allowed=False, tier=self.tier_of(request)[0], policy=request.policy, limit=0, remaining=0, window_s=0,
            reset_at=now, reason=f"{scope_name(scope, scope_id)} may not call the model {request.model}",
            limited_by="model", team_id=plan.team_id, scope=scope, scope_id=scope_id)

    def decision(self, request: LimitRequest, plan: LimitPlan, reading: CounterReading) -> LimitDecision:
        if reading.check:
            return self.scope_decision(request, plan, reading, plan.checks[reading.check - 1])
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
            reserved_usd=Decimal(plan.reserve_nano) / NANO if reading.allowed else Decimal(0),
            team_id=plan.team_id,
        )

    def scope_decision(self, request: LimitRequest, plan: LimitPlan, reading: CounterReading, check: ScopeCheck
                       ) -> LimitDecision:
        """A denial by a key's, user's or team's own limit: which one, and for a budget, which period, how
        much of it is spent and when it resets (Retry-After runs until then)."""
        tier, _ = self.tier_of(request)
        now = datetime.fromtimestamp(reading.now_ms / 1000, UTC)
        reset_at = max(datetime.fromtimestamp(reading.reset_ms / 1000, UTC), now + timedelta(seconds=1))
        who = scope_name(check.scope, check.scope_id)
        fields: dict = {}
        limit, remaining = reading.limit, max(0, reading.remaining)
        if check.kind == "requests":
            window_s = check.params[0] // 1000
            reason = f"{who} limit: {check.limit} LLM requests {_per_window(window_s)}."
        elif check.kind == "tokens":
            window_s = 60
            reason = f"{who} limit: {check.limit} LLM tokens per minute."
        else:
            budget = check.budget
            assert budget is not None
            window_s = budget_window_s(check, reading.reset_ms)
            limit, remaining = reading.limit // 10**7, remaining // 10**7  # nano-USD -> cents
            fields = {"period": budget.period, "timezone": budget.tz if budget.period else None,
                      "rolling": budget.rolling, "budget_usd": budget.usd,
                      "spent_usd": Decimal(reading.used) / NANO, "resets_at": reset_at}
            reason = (f"{who}'s LLM budget of ${budget.usd} per {budget.label()} is spent until "
                      f"{reset_at:%Y-%m-%dT%H:%M:%SZ}.")
        return LimitDecision(
            allowed=False, tier=tier, policy=request.policy, limit=limit, remaining=remaining, window_s=window_s,
            reset_at=reset_at, retry_after_s=math.ceil((reset_at - now).total_seconds()), reason=reason,
            limited_by=reading.limited_by, team_id=plan.team_id, scope=check.scope, scope_id=check.scope_id,
            **fields)

    def settlement(self, event: LlmCompleted, book: LimitsBook = EMPTY_BOOK) -> tuple[str, int, int] | None:
        """(key, actual tokens, actual nano-USD) of a finished call, or None when the reservation must
        stay as it is: usage marked estimated but with no tokens is a sender that could not count, and
        settling it would forget spend the provider bills (the reservation keeps the worst case). A cache
        hit spent nothing: it settles to 0 (the gateway's hits reserved nothing, and settle as a no-op;
        an upstream service that reserved and then answered from its own cache gets its reservation back).

        The key is that of the team the decision counted the call for (the event's `team_id`); an event
        that does not say (an upstream service that did not copy it) is taken to be its user's team now."""
        team = event.team_id or book.team_of(event.user_id)
        key = caller_base(event.user_id, event.client_ip, team)
        if event.cache_hit:
            return key, 0, 0
        if event.usage_source == "estimated" and event.total_tokens == 0:
            return None
        return key, event.total_tokens, to_nano_usd(self.catalog.cost_of(event).usd)


def scope_name(scope: Scope, scope_id: str) -> str:
    """Key 17, User alice, Team research."""
    return f"{scope.capitalize()} {scope_id}"


def budget_window_s(check: ScopeCheck, reset_ms: int) -> int:
    """A budget's period in seconds: the calendar period the decision counted in (the one that ends at the
    reset), or the rolling window."""
    budget: Budget | None = check.budget
    if budget is not None and budget.rolling_length is not None:
        return int(budget.rolling_length.total_seconds())
    start, end, following = check.params
    return (following - end) // 1000 if reset_ms >= following else (end - start) // 1000


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
