"""When spend crosses a threshold, which alert is due. Pure domain code: no I/O, Decimal only.

Windows are UTC calendar periods (this hour, today, this month), so that each alert has a stable key:
one alert per scope, period, level and window.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Literal

from services.cost.rollups import bucket_start
from shared.events import Alert
from shared.policy import Thresholds
from shared.spend_projection import month_bounds, projected_month_end

PERIOD_NAMES = {"hour": "hourly", "day": "daily", "month": "monthly"}
MIN_PROJECTION_ELAPSED = timedelta(days=1)


@dataclass(frozen=True)
class AlertClaim:
    """An alert due, with what it is about: kind threshold | projection | unpriced, scope all | user:<id>."""

    kind: str
    scope: str
    alert: Alert


@dataclass(frozen=True)
class SpendTotal:
    """Spend so far in one window: scope "all" or "user:<id>"."""

    scope: str
    period: str
    bucket: datetime
    cost: Decimal


def money(amount: Decimal) -> str:
    """$52.34; whole amounts as $50, the way the original alerts wrote thresholds."""
    if amount == amount.to_integral_value():
        return f"${amount.to_integral_value():,}"
    return f"${amount.quantize(Decimal('0.01'), rounding=ROUND_HALF_UP):,}"


def cents(amount: Decimal) -> str:
    return f"${amount.quantize(Decimal('0.01'), rounding=ROUND_HALF_UP):,}"


def threshold_alerts(total: SpendTotal, thresholds: Thresholds) -> list[AlertClaim]:
    user = total.scope.removeprefix("user:") if total.scope.startswith("user:") else None
    if user is not None:
        if total.period != "day":
            return []
        levels = thresholds.user_daily
    else:
        levels = thresholds.for_period(total.period)
    alerts = []
    levels_by_severity: tuple[tuple[Literal["warning", "critical"], Decimal | None], ...] = (
        ("warning", levels.warning), ("critical", levels.critical))
    for severity, threshold in levels_by_severity:
        if threshold is None or total.cost <= threshold:
            continue
        name = PERIOD_NAMES[total.period]
        subject = f"{name.capitalize()} LLM cost" + (f" for user {user}" if user else "")
        text = (f"{severity.upper()}: {subject} ({cents(total.cost)}) exceeded {severity} threshold "
                f"({money(threshold)})")
        alerts.append(AlertClaim("threshold", total.scope, Alert(
            key=f"cost:{total.scope}:{total.period}:{total.bucket.isoformat()}:{severity}",
            source="cost", severity=severity, title="LLM Cost Alert", text=text, period=name,
            threshold=threshold, actual=total.cost, overage=total.cost - threshold,
            window=total.bucket.isoformat(),
        )))
    return alerts


def projection_alert(month_to_date: Decimal, now: datetime, thresholds: Thresholds) -> AlertClaim | None:
    """Warn once a day when this month's spend, projected linearly to month end, passes the monthly
    critical threshold. Not before a day has passed: a first hour's spend says little of a month."""
    critical = thresholds.monthly.critical
    start, end = month_bounds(now)
    if critical is None or now - start < MIN_PROJECTION_ELAPSED or month_to_date > critical:
        return None
    projected = projected_month_end(month_to_date, now)
    if projected <= critical:
        return None
    last_day = (end - timedelta(days=1)).date().isoformat()
    day = now.date().isoformat()
    return AlertClaim("projection", "all", Alert(
        key=f"cost:all:projected:{start.isoformat()}:{day}", source="cost", severity="warning",
        title="LLM Cost Projection",
        text=(f"WARNING: Monthly LLM cost is projected to reach {cents(projected)} by {last_day}, above the "
              f"critical threshold ({money(critical)}); {cents(month_to_date)} spent so far"),
        period="monthly", threshold=critical, actual=projected, overage=projected - critical,
        window=start.isoformat(),
    ))


def unpriced_model_alert(model: str, day: datetime, fallback: str) -> AlertClaim:
    bucket = bucket_start("day", day)
    return AlertClaim("unpriced", "all", Alert(
        key=f"cost:unpriced:{model}:{bucket.date().isoformat()}", source="cost", severity="warning",
        title="LLM model without a price",
        text=(f"WARNING: model {model} has no price; its calls are charged at the fallback rate ({fallback}) "
              "until a price is configured"),
        period="daily", window=bucket.isoformat(),
    ))
