"""The `cost.query` contract: what the gateway (or anyone) asks the cost service, what it answers, and
the port both sides implement (the api's NATS client asks it, the cost service's read side answers
it). Money is Decimal, sent as decimal strings."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Literal, Protocol

from pydantic import BaseModel, Field, model_validator

from shared.limits import Budget, Scope


class CostQuery(BaseModel):
    """Asked on `cost.query`. user_id None means every user (the gateway allows that to admins only).
    `budgets`: one key's, user's or team's spend against each of its budgets (`scope`, `scope_id`)."""

    kind: Literal["current", "analytics", "budgets"]
    user_id: str | None = None
    api_key_id: int | None = Field(default=None, ge=1, description="current only: one API key's own spend.")
    start: datetime | None = None
    end: datetime | None = None
    top_n: int = Field(default=10, ge=1, le=100)
    scope: Scope | None = None
    scope_id: str | None = Field(default=None, min_length=1, max_length=256)

    @model_validator(mode="after")
    def _range(self) -> CostQuery:
        if self.kind == "budgets" and (self.scope is None or self.scope_id is None):
            raise ValueError("budgets needs scope and scope_id")
        if self.kind == "analytics":
            if self.start is None or self.end is None:
                raise ValueError("analytics needs start and end")
            if self.start.tzinfo is None or self.end.tzinfo is None:
                raise ValueError("start and end must carry a timezone")
            if self.end <= self.start:
                raise ValueError("end must be after start")
            if self.api_key_id is not None:
                raise ValueError("api_key_id is for current spend only")
        return self


class CurrentCost(BaseModel):
    user_id: str | None
    api_key_id: int | None = None
    hourly: Decimal
    daily: Decimal
    monthly: Decimal
    as_of: datetime


class BudgetSpend(BaseModel):
    """One budget of a scope, now: its period, what was spent in it (the ledger's), what remains, and when
    it resets (a rolling window: when its oldest spend leaves it; null when nothing was spent)."""

    budget: Budget
    period_start: datetime
    resets_at: datetime | None
    spent_usd: Decimal
    remaining_usd: Decimal


class ScopeSpend(BaseModel):
    """A key's, user's or team's spend: against each of its budgets, and this UTC day and month."""

    scope: Scope
    scope_id: str
    as_of: datetime
    budgets: list[BudgetSpend]
    today_usd: Decimal
    this_month_usd: Decimal


class Breakdown(BaseModel):
    key: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost: Decimal
    estimated_requests: int
    estimated_cost: Decimal
    cache_hits: int = Field(default=0, description="Calls answered from the gateway's response cache.")
    saved_usd: Decimal = Field(default=Decimal(0), description="What the cache hits would have cost.")


class Analytics(BaseModel):
    user_id: str | None
    start: datetime
    end: datetime
    requests: int
    successful_requests: int
    success_rate: Decimal | None
    prompt_tokens: int
    completion_tokens: int
    cost: Decimal
    estimated_requests: int = Field(description="Calls whose usage was counted by costwarden: the provider sent none.")
    estimated_cost: Decimal = Field(description="The part of `cost` priced from estimated usage.")
    cache_hits: int = Field(default=0, description="Calls the gateway answered from its response cache (cost 0).")
    cache_hit_rate: Decimal | None = Field(default=None, description="Percent of the requests that were cache hits.")
    saved_usd: Decimal = Field(default=Decimal(0), description="What the cache hits would have cost at the provider.")
    latency_ms: dict[str, float | None]
    by_model: list[Breakdown] = Field(description="By the public model the callers asked for.")
    by_served_model: list[Breakdown] = Field(description="By the provider's model that answered (and was billed).")
    by_endpoint: list[Breakdown]
    by_tag: list[Breakdown]
    by_user: list[Breakdown]


class CostServiceUnavailable(Exception):
    """No cost replica answered in time."""


class CostQueryRefused(Exception):
    """The cost service found the query invalid; the message says why."""


class CostQueries(Protocol):
    async def answer(self, query: CostQuery) -> CurrentCost | Analytics | ScopeSpend:
        """Current spend, analytics, or a scope's spend against its budgets; CostServiceUnavailable or
        CostQueryRefused when there is no answer."""
        ...
