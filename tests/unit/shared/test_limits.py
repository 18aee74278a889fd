"""What an administrator may set on a key, user or team, and what is refused with a clear reason."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from pydantic import ValidationError

from shared.limits import Budget, ScopeLimits


def test_a_budget_is_a_calendar_period_in_a_timezone_or_a_rolling_window():
    monthly = Budget(usd=Decimal("500"), period="month", timezone="Europe/Berlin")
    rolling = Budget(usd=Decimal("5"), rolling="24h")
    assert (monthly.spec, rolling.spec) == ("month@Europe/Berlin", "rolling:24h")
    assert Budget(usd=Decimal(1), period="day").spec == "day@UTC"
    at = datetime(2026, 3, 10, 12, tzinfo=UTC)
    assert monthly.span(at).start == datetime(2026, 2, 28, 23, tzinfo=UTC)
    assert rolling.span(at).end == at


@pytest.mark.parametrize(("fields", "reason"), [
    ({"usd": "5"}, "either a calendar period"),
    ({"usd": "5", "period": "day", "rolling": "1h"}, "not both"),
    ({"usd": "5", "rolling": "1h", "timezone": "UTC"}, "no timezone"),
    ({"usd": "5", "period": "day", "timezone": "Europe/Paris2"}, "unknown timezone"),
    ({"usd": "5", "period": "fortnight"}, "period"),
    ({"usd": "5", "rolling": "30s"}, "rolling window is from"),
    ({"usd": "0", "period": "day"}, "greater than 0"),
    ({"usd": "5", "period": "day", "cap": 1}, "Extra inputs"),
])
def test_malformed_budgets_are_refused_with_the_reason(fields, reason):
    with pytest.raises(ValidationError, match=reason):
        Budget.model_validate(fields)


def test_scope_limits_keep_soft_thresholds_sorted_and_refuse_what_cannot_be_meant():
    limits = ScopeLimits.model_validate({"budgets": [{"usd": "10", "period": "day"}], "soft": ["0.8", "0.5", "0.8"]})
    assert limits.soft == (Decimal("0.5"), Decimal("0.8"))
    with pytest.raises(ValidationError, match="above 0 and at most 1"):
        ScopeLimits.model_validate({"budgets": [{"usd": "10", "period": "day"}], "soft": ["80"]})
    with pytest.raises(ValidationError, match="set a budget too"):
        ScopeLimits.model_validate({"soft": ["0.5"]})
    with pytest.raises(ValidationError, match="same period"):
        ScopeLimits.model_validate({"budgets": [{"usd": "1", "period": "day"}, {"usd": "2", "period": "day",
                                                                                "timezone": "UTC"}]})


def test_an_allow_list_names_the_models_a_scope_may_call():
    assert ScopeLimits().allows("gpt-4o") and ScopeLimits().empty
    only_mini = ScopeLimits(models=("gpt-4o-mini",))
    assert only_mini.allows("gpt-4o-mini") and not only_mini.allows("gpt-4o")
