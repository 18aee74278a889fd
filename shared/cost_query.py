"""The `cost.query` contract: what the gateway (or anyone) asks the cost service, and what it answers.
Money is Decimal, sent as decimal strings."""

from __future__ import annotations

import calendar
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, Field, model_validator


class CostQuery(BaseModel):
    """Asked on `cost.query`. user_id None means every user (the gateway allows that to admins only)."""

    kind: Literal["current", "analytics"]
    user_id: str | None = None
    api_key_id: int | None = Field(default=None, ge=1, description="current only: one API key's own spend.")
    start: datetime | None = None
    end: datetime | None = None
    top_n: int = Field(default=10, ge=1, le=100)

    @model_validator(mode="after")
    def _range(self) -> CostQuery:
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


class Breakdown(BaseModel):
    key: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost: Decimal
    estimated_requests: int
    estimated_cost: Decimal


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
    latency_ms: dict[str, float | None]
    by_model: list[Breakdown] = Field(description="By the public model the callers asked for.")
    by_served_model: list[Breakdown] = Field(description="By the provider's model that answered (and was billed).")
    by_endpoint: list[Breakdown]
    by_tag: list[Breakdown]
    by_user: list[Breakdown]


def month_bounds(at: datetime) -> tuple[datetime, datetime]:
    """The UTC month that contains `at`: [first instant, first instant of the next month)."""
    start = at.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return start, start + timedelta(days=calendar.monthrange(start.year, start.month)[1])


def projected_month_end(month_to_date: Decimal, now: datetime) -> Decimal:
    """This month's spend at its end if it goes on at the pace it has kept so far (linear)."""
    start, end = month_bounds(now)
    elapsed = (now - start) / timedelta(seconds=1)
    if elapsed <= 0:
        return month_to_date
    return month_to_date * Decimal((end - start) / timedelta(seconds=1)) / Decimal(elapsed)
