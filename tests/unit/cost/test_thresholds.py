"""Which cost alert is due when spend crosses a threshold, and the month-end projection."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from services.cost.thresholds import SpendTotal, projection_alert, threshold_alerts
from shared.policy import Thresholds

HOUR = datetime(2026, 11, 28, 10, tzinfo=UTC)
DEFAULTS = Thresholds()  # hourly $10/$50, daily $100/$500, monthly $1000/$5000, per user daily $10


def test_crossing_both_levels_raises_both_with_the_original_text_and_stable_keys():
    claims = threshold_alerts(SpendTotal("all", "hour", HOUR, Decimal("52.339")), DEFAULTS)
    assert [(c.alert.severity, c.alert.threshold, c.alert.overage) for c in claims] == [
        ("warning", Decimal(10), Decimal("42.339")), ("critical", Decimal(50), Decimal("2.339"))]
    assert claims[1].alert.text == "CRITICAL: Hourly LLM cost ($52.34) exceeded critical threshold ($50)"
    assert claims[1].alert.key == "cost:all:hour:2026-11-28T10:00:00+00:00:critical"
    again = threshold_alerts(SpendTotal("all", "hour", HOUR, Decimal("60")), DEFAULTS)
    assert [c.alert.key for c in again] == [c.alert.key for c in claims]  # one alert per level and window


def test_at_or_below_a_threshold_nothing_is_due():
    assert threshold_alerts(SpendTotal("all", "day", HOUR, Decimal("100")), DEFAULTS) == []


def test_a_user_is_watched_daily_only():
    day = datetime(2026, 11, 28, tzinfo=UTC)
    [claim] = threshold_alerts(SpendTotal("user:ann", "day", day, Decimal("10.01")), DEFAULTS)
    assert claim.scope == "user:ann" and "for user ann" in claim.alert.text and claim.alert.severity == "warning"
    assert threshold_alerts(SpendTotal("user:ann", "hour", HOUR, Decimal("999")), DEFAULTS) == []


def test_the_projection_warns_when_the_month_is_on_course_past_critical():
    now = datetime(2026, 11, 11, tzinfo=UTC)  # ten days of thirty gone
    claim = projection_alert(Decimal("1700"), now, DEFAULTS)
    assert claim is not None and claim.alert.actual == Decimal("5100")
    assert "projected to reach $5,100.00 by 2026-11-30" in claim.alert.text
    assert claim.alert.key == "cost:all:projected:2026-11-01T00:00:00+00:00:2026-11-11"  # once a day
    assert projection_alert(Decimal("1600"), now, DEFAULTS) is None  # on course for $4,800


def test_no_projection_before_a_day_has_passed_or_once_critical_is_already_passed():
    assert projection_alert(Decimal("400"), datetime(2026, 11, 1, 20, tzinfo=UTC), DEFAULTS) is None
    assert projection_alert(Decimal("5001"), datetime(2026, 11, 20, tzinfo=UTC), DEFAULTS) is None
