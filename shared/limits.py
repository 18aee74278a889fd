"""Limits an administrator sets on a key, a user or a team (the admin API keeps them in `scope_limits`),
on top of the caller's tier (the YAML file). Pure value types: the admin API validates with them, the
limiter enforces them, the cost service sums their budgets' spend and raises their soft alerts, the console
shows them.

A call must pass every scope it belongs to: its key's limits, its user's, its team's and its tier's. Scope
limits only narrow what the tier allows; a scope with nothing set adds no check."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.budget_periods import (
    QUARTER_HOUR,
    CalendarPeriod,
    RollingBuckets,
    Span,
    calendar_period,
    parse_duration,
    quarter_start,
    zone,
)

Scope = Literal["key", "user", "team"]
SCOPES: tuple[Scope, ...] = ("key", "user", "team")
MAX_BUDGETS = 8
MAX_SOFT = 8
MAX_MODELS = 256
TEAM_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class Budget(BaseModel):
    """At most `usd` per calendar `period` in `timezone`, or per `rolling` window (`24h`, `7d`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    usd: Decimal = Field(gt=0, le=Decimal("1000000000"), decimal_places=6)
    period: CalendarPeriod | None = None
    timezone: str | None = None
    rolling: str | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Budget:
        if (self.period is None) == (self.rolling is None):
            raise ValueError("a budget has either a calendar period (day, week, month) or a rolling window, not both")
        if self.rolling is not None:
            if self.timezone is not None:
                raise ValueError("a rolling budget has no timezone")
            parse_duration(self.rolling)
        else:
            zone(self.timezone or "UTC")
        return self

    @property
    def tz(self) -> str:
        return self.timezone or "UTC"

    @property
    def spec(self) -> str:
        """What the budget counts over, its identity: `month@Europe/Berlin`, `rolling:24h`. Changing a
        budget's amount keeps its spend; changing its period or timezone counts afresh."""
        return f"rolling:{self.rolling}" if self.rolling else f"{self.period}@{self.tz}"

    @property
    def rolling_length(self) -> timedelta | None:
        return parse_duration(self.rolling) if self.rolling else None

    def span(self, at: datetime) -> Span:
        """The period counted at `at`: the calendar period that contains it, or the rolling window ending
        at it (counted from the start of its oldest bucket)."""
        length = self.rolling_length
        if length is None:
            assert self.period is not None
            return calendar_period(self.period, self.tz, at)
        return Span(RollingBuckets.of(length).counted_from(at), at)

    def spend_span(self, at: datetime) -> Span:
        """The quarter hours whose recorded spend counts at `at` (the cost service keeps spend per quarter
        hour): the calendar period, or the rolling window from the quarter hour that holds its start."""
        length = self.rolling_length
        if length is None:
            return self.span(at)
        return Span(quarter_start(at - length), quarter_start(at) + QUARTER_HOUR)

    def resets_at(self, at: datetime, first_spent: datetime | None) -> datetime | None:
        """When the budget resets: the end of its calendar period; for a rolling window, when the oldest
        quarter hour with spend in it leaves (None when nothing was spent)."""
        length = self.rolling_length
        if length is None:
            return self.span(at).end
        return first_spent + QUARTER_HOUR + length if first_spent is not None else None

    def label(self) -> str:
        """`month (Europe/Berlin)`, `day (UTC)`, `rolling 24h`."""
        return f"rolling {self.rolling}" if self.rolling else f"{self.period} ({self.tz})"


class ScopeLimits(BaseModel):
    """What one key, user or team may do; everything optional."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    budgets: tuple[Budget, ...] = Field(default=(), max_length=MAX_BUDGETS)
    soft: tuple[Decimal, ...] = Field(
        default=(), max_length=MAX_SOFT,
        description="Fractions of each budget (0.5, 0.8) at which one alert is raised per period.")
    requests: int | None = Field(default=None, gt=0, le=10**9, description="Requests per `window_s`.")
    window_s: int = Field(default=3600, gt=0, le=31 * 86_400)
    tokens_per_minute: int | None = Field(default=None, gt=0, le=10**12)
    models: tuple[str, ...] | None = Field(
        default=None, max_length=MAX_MODELS, description="The public models this scope may call; absent: any.")

    @field_validator("soft")
    @classmethod
    def _fractions(cls, soft: tuple[Decimal, ...]) -> tuple[Decimal, ...]:
        if any(not Decimal(0) < fraction <= Decimal(1) for fraction in soft):
            raise ValueError("soft thresholds are fractions of a budget, above 0 and at most 1 (0.5, 0.8)")
        return tuple(sorted(set(soft)))

    @field_validator("budgets")
    @classmethod
    def _distinct(cls, budgets: tuple[Budget, ...]) -> tuple[Budget, ...]:
        specs = [budget.spec for budget in budgets]
        if len(set(specs)) != len(specs):
            raise ValueError("two budgets count over the same period; give each period one budget")
        return budgets

    @model_validator(mode="after")
    def _soft_needs_budgets(self) -> ScopeLimits:
        if self.soft and not self.budgets:
            raise ValueError("soft thresholds are fractions of a budget: set a budget too")
        return self

    @property
    def empty(self) -> bool:
        return self == EMPTY_LIMITS

    def allows(self, model: str) -> bool:
        return self.models is None or model in self.models


EMPTY_LIMITS = ScopeLimits()
